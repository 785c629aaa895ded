#!/usr/bin/env bash
# Runs both driver suites and ends with one line "N passed, N failed[, N skipped]".
#   PYTHON=/usr/bin/python3 NODE=node tests/run.sh
# PYTHON runs the Python suite (its plain-mode tests use that interpreter; IPython and
# matplotlib/pandas tests pick the first interpreter that has them: PYTHON, /usr/bin/python3).
# NODE runs the JavaScript suite and is also the node the driver is tested with.
set -u
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python3}"
NODE="${NODE:-node}"
export PYTHONDONTWRITEBYTECODE=1
passed=0 failed=0 skipped=0

py_log="$(mktemp)"; js_log="$(mktemp)"
trap 'rm -f "$py_log" "$js_log"' EXIT

echo "== python driver ($("$PYTHON" --version 2>&1))"
"$PYTHON" -m unittest -v test_python_driver >"$py_log" 2>&1
py_rc=$?
grep -E '(ok|FAIL|ERROR|skipped.*)$' "$py_log" | grep -E ' \.\.\. ' || true
tail -n 3 "$py_log"
ran=$(sed -n 's/^Ran \([0-9]*\) tests\{0,1\}.*/\1/p' "$py_log" | tail -n 1)
ran=${ran:-0}
count() { grep -o "$1=[0-9]*" "$py_log" | tail -n 1 | cut -d= -f2; }
f=$(count failures); e=$(count errors); s=$(count skipped)
f=${f:-0}; e=${e:-0}; s=${s:-0}
if [ "$ran" -eq 0 ] || { [ "$py_rc" -ne 0 ] && [ $((f + e)) -eq 0 ]; }; then
    echo "python suite did not run properly (exit $py_rc):"; tail -n 30 "$py_log"; e=$((e + 1))
fi
passed=$((passed + ran - f - e - s)); failed=$((failed + f + e)); skipped=$((skipped + s))

echo "== node driver ($("$NODE" --version 2>&1))"
"$NODE" --test node_driver.test.js >"$js_log" 2>&1
js_rc=$?
grep -E '^(not )?ok [0-9]+ ' "$js_log" || true
jp=$(sed -n 's/^# pass \([0-9]*\)$/\1/p' "$js_log" | tail -n 1)
jf=$(sed -n 's/^# fail \([0-9]*\)$/\1/p' "$js_log" | tail -n 1)
jc=$(sed -n 's/^# cancelled \([0-9]*\)$/\1/p' "$js_log" | tail -n 1)
js=$(sed -n 's/^# skipped \([0-9]*\)$/\1/p' "$js_log" | tail -n 1)
jp=${jp:-0}; jf=${jf:-0}; jc=${jc:-0}; js=${js:-0}
if [ "$jp" -eq 0 ] || { [ "$js_rc" -ne 0 ] && [ $((jf + jc)) -eq 0 ]; }; then
    echo "node suite did not run properly (exit $js_rc):"; tail -n 30 "$js_log"; jf=$((jf + 1))
fi
grep -A 12 '^not ok' "$js_log" | cut -c1-300 || true
passed=$((passed + jp)); failed=$((failed + jf + jc)); skipped=$((skipped + js))

if [ "$failed" -ne 0 ]; then
    grep -B 2 -A 25 -E '^(FAIL|ERROR):' "$py_log" | cut -c1-300 || true
fi
if [ "$skipped" -ne 0 ]; then
    echo "$passed passed, $failed failed, $skipped skipped"
else
    echo "$passed passed, $failed failed"
fi
[ "$failed" -eq 0 ]
