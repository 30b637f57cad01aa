"""The last failure in a stage's log, in a few short lines, for the end of `make test`'s output.

CI keeps only the end of what `make test` prints, and a failed Ansible task's message sits hundreds of lines above
it, often as JSON holding a nested run's own output (hv3's background rollout, a molecule playbook). This prints the
task that failed and its message, nested messages unpacked, under the stage's name:

    python3 -m tools.failure_digest STAGE LOG [--lines N] [--width N]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import Iterable, Iterator, List, Sequence, Tuple

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# molecule's frames and the lines that only repeat that something failed, without saying what
FRAME = re.compile(r"^[\s│└┌─]+|[\s│]+$")
NOISE = re.compile(r"Ansible return code was|Molecule executed|Executed: Failed|^make(\[\d+\])?: \*\*\*|^PLAY RECAP|"
                   r"failed=\d+|^\S+\s+: ok=\d+")
FAILURE = re.compile(r"fatal: \[|failed: \[|FAILED!|^FAILED |^E\s{3}|^ERROR\b|Traceback \(most recent|Error: |"
                     r"assertion failed|AssertionError")
TASK = re.compile(r"^(TASK|RUNNING HANDLER) \[|^_{5,} .* _{5,}$")
MESSAGE_KEYS = ("msg", "message", "stderr", "module_stderr", "stdout")


def clean(line: str) -> str:
    return FRAME.sub("", ANSI.sub("", line))


def _messages(result: object) -> Iterator[str]:
    """The text a failed task's result carries: its msg (a string or a list of lines), else its stderr or stdout."""
    if not isinstance(result, dict):
        return
    for key in MESSAGE_KEYS:
        value = result.get(key)
        if isinstance(value, list):
            for item in value:
                yield from str(item).splitlines()
            return
        if isinstance(value, str) and value.strip():
            yield from value.splitlines()
            return


def flatten(lines: Iterable[str], depth: int = 0) -> Iterator[Tuple[int, str]]:
    """Each line with its depth, and under a task result printed as `=> {...}` its message's lines, one deeper."""
    for raw in lines:
        line = clean(raw)
        if not line:
            continue
        head, arrow, body = line.partition("=> {")
        if arrow and depth < 4:
            try:
                result = json.loads("{" + body)
            except ValueError:
                yield depth, line
                continue
            yield depth, head.rstrip() + " =>"
            yield from flatten(_messages(result), depth + 1)
        else:
            yield depth, line


def digest(lines: Sequence[str], max_lines: int = 18, width: int = 240) -> List[str]:
    """The last failure with its message, under the task that failed (and the outer task it ran in, if nested)."""
    flat = [(depth, line) for depth, line in flatten(lines) if not NOISE.search(line)]
    failures = [index for index, (_depth, line) in enumerate(flat) if FAILURE.search(line)]
    if not failures:
        return []
    last = failures[-1]
    depth = flat[last][0]
    end = last + 1
    while end < len(flat) and flat[end][0] > depth:
        end += 1
    picked = flat[last:end]
    before = flat[:last]
    # the task the failure belongs to, and for a nested failure the outermost task it ran in
    for level in sorted({depth, 0}, reverse=True):
        task = next((entry for entry in reversed(before) if entry[0] == level and TASK.search(entry[1])), None)
        if task:
            picked.insert(0, task)
    if len(picked) > max_lines:
        picked = picked[:max_lines - 1] + [(depth + 1, "...")]
    shown = ["  " * level + line for level, line in picked]
    return [line if len(line) <= width else line[:width - 3] + "..." for line in shown]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage")
    parser.add_argument("log")
    parser.add_argument("--lines", type=int, default=18)
    parser.add_argument("--width", type=int, default=240)
    args = parser.parse_args(argv)
    try:
        with open(args.log, encoding="utf-8", errors="replace") as log:
            lines = log.read().splitlines()
    except OSError as error:
        print("make test: %s failed, and its log cannot be read: %s" % (args.stage, error))
        return 0
    found = digest(lines, args.lines, args.width)
    print("make test: %s failed; its last failure (whole log: %s):" % (args.stage, args.log))
    print("\n".join("  " + line for line in found) if found else "  (no failure line found; see the log)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
