# sandboxkit-agent: BASH_ENV prelude of cold command shells that keep the session state.
# Raises the OOM score (a no-op under the supervisor, which sets it before the uid changes), installs the
# EXIT trap that dumps "$PWD" NUL `export -p` NUL to fd 100 with builtins only, and restores a BASH_ENV the
# session exported itself (see docs/supervisor-protocol.md, "Prelude").
{ builtin echo 1000 >/proc/self/oom_score_adj; } 2>/dev/null
trap -- '{ builtin set +eux; } 2>/dev/null; { builtin printf "%s\0" "$PWD"; builtin export -p; builtin printf "\0"; } >&100 2>/dev/null' EXIT
if [[ -v __SBK_BASH_ENV ]]; then BASH_ENV=$__SBK_BASH_ENV; unset __SBK_BASH_ENV; . "$BASH_ENV"; else unset BASH_ENV; fi
