#!/usr/bin/env bash
# `make test`'s stages, timed.
#   tools/stage.sh reset                 forget the last run's times
#   tools/stage.sh run NAME COMMAND...   run COMMAND, its output also kept in build/stage-logs/NAME.log, and append
#                                        "NAME SECONDS ok|FAILED" to the times file
#   tools/stage.sh digest                for each failed stage, the task or test that failed and its message
#   tools/stage.sh table                 print the times file as a table, with the total
# The times go to a file rather than a variable because each stage is its own make invocation; the
# table is printed even when a stage failed, so a slow failure still shows where the time went. CI keeps only the end
# of the output, so the digest of a failure is printed there too, just before the table.
set -uo pipefail
times=${STAGE_TIMES:-build/stage-times.txt}
logs=${STAGE_LOGS:-build/stage-logs}

case ${1:-} in
  reset)
    rm -f "$times"
    rm -rf "$logs"
    ;;
  run)
    name=$2
    shift 2
    mkdir -p "$(dirname "$times")" "$logs"
    start=$(date +%s)
    "$@" 2>&1 | tee "$logs/$name.log"
    rc=${PIPESTATUS[0]}
    result=ok
    [ "$rc" -eq 0 ] || result=FAILED
    printf '%s %d %s\n' "$name" $(($(date +%s) - start)) "$result" >>"$times"
    exit "$rc"
    ;;
  digest)
    [ -s "$times" ] || exit 0
    awk '$3 == "FAILED" { print $1 }' "$times" | while read -r name; do
      python3 -m tools.failure_digest "$name" "$logs/$name.log"
    done
    ;;
  table)
    [ -s "$times" ] || { echo "stage.sh: no stage times in $times" >&2; exit 1; }
    awk '{ printf "%-16s %6d s  %5dm%02ds  %s\n", $1, $2, $2 / 60, $2 % 60, $3; total += $2 }
         END { printf "%-16s %6d s  %5dm%02ds\n", "total", total, total / 60, total % 60 }' "$times"
    ;;
  *)
    echo "usage: $0 reset | run NAME COMMAND... | digest | table" >&2
    exit 2
    ;;
esac
