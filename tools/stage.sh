#!/usr/bin/env bash
# `make test`'s stages, timed.
#   tools/stage.sh reset                 forget the last run's times
#   tools/stage.sh run NAME COMMAND...   run COMMAND, append "NAME SECONDS ok|FAILED" to the times file
#   tools/stage.sh table                 print the times file as a table, with the total
# The times go to a file rather than a variable because each stage is its own make invocation; the
# table is printed even when a stage failed, so a slow failure still shows where the time went.
set -uo pipefail
times=${STAGE_TIMES:-build/stage-times.txt}

case ${1:-} in
  reset)
    rm -f "$times"
    ;;
  run)
    name=$2
    shift 2
    mkdir -p "$(dirname "$times")"
    start=$(date +%s)
    "$@"
    rc=$?
    result=ok
    [ "$rc" -eq 0 ] || result=FAILED
    printf '%s %d %s\n' "$name" $(($(date +%s) - start)) "$result" >>"$times"
    exit "$rc"
    ;;
  table)
    [ -s "$times" ] || { echo "stage.sh: no stage times in $times" >&2; exit 1; }
    awk '{ printf "%-16s %6d s  %5dm%02ds  %s\n", $1, $2, $2 / 60, $2 % 60, $3; total += $2 }
         END { printf "%-16s %6d s  %5dm%02ds\n", "total", total, total / 60, total % 60 }' "$times"
    ;;
  *)
    echo "usage: $0 reset | run NAME COMMAND... | table" >&2
    exit 2
    ;;
esac
