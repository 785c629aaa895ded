# sandboxkit-agent: BASH_ENV prelude of cold command shells whose state is not kept (persistState: false).
# Like prelude.sh without the state trap.
{ builtin echo 1000 >/proc/self/oom_score_adj; } 2>/dev/null
if [[ -v __SBK_BASH_ENV ]]; then BASH_ENV=$__SBK_BASH_ENV; unset __SBK_BASH_ENV; . "$BASH_ENV"; else unset BASH_ENV; fi
