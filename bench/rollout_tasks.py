"""Benchmark: tasks per host and wall time of the local fleet rollout, an older tree against this one, in one run.

Not a test: it asserts nothing about speed. For each tree (a git worktree of BASE, default HEAD~1 of the
change under measure, and the working tree) it builds the same 3-host local fleet (1 VM per host), runs
`kernel-live-update.yml` one host per batch, and counts the tasks each host ran (from a JSON-lines callback)
and the run's wall time. It prints a Markdown table and writes it to bench/results/rollout-tasks.md.

    python bench/rollout_tasks.py [BASE]
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Dict, List, Tuple

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]

from lab import local_fleet as fleet  # noqa: E402

CALLBACKS = ROOT / "tests" / "callback_plugins"
HOSTS = 3


def worktree(base: str, where: Path) -> Path:
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "--force", str(where), base], check=True,
                   capture_output=True)
    return where


def rollout(tree: Path, lab: Path) -> Tuple[float, Dict[str, int], int]:
    """Wall seconds, tasks per host, and ansible-playbook's exit code."""
    log = lab / "tasks.jsonl"
    # the tree's own playbook, roles and plugins: its collection link resolves inside the tree
    env = dict(os.environ, ANSIBLE_CONFIG=str(tree / "ansible.cfg"), ANSIBLE_CALLBACK_PLUGINS=str(CALLBACKS),
               ANSIBLE_CALLBACKS_ENABLED="result_log", RESULT_LOG=str(log), ANSIBLE_NOCOLOR="1")
    command = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(lab / "inventory.yml"),
               str(tree / "playbooks" / "kernel-live-update.yml"),
               "-e", json.dumps({"liveupdate_report_dir": str(lab / "reports"), "liveupdate_batch": 1})]
    start = time.monotonic()
    done = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True, check=False)
    wall = time.monotonic() - start
    entries = [json.loads(line) for line in log.read_text().splitlines() if line] if log.exists() else []
    per_host = Counter(entry["host"] for entry in entries if entry["host"].startswith("hv"))
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-3000:])
    return wall, dict(sorted(per_host.items())), done.returncode


def measure(label: str, tree: Path) -> Dict[str, object]:
    lab = Path(tempfile.mkdtemp(prefix="lu-bt-", dir="/tmp"))
    try:
        fleet.create(lab, hosts=HOSTS, vms=1)
        # the lab's inventory names this tree's lab/update_qemu.py; both trees run the same one
        wall, per_host, rc = rollout(tree, lab)
    finally:
        fleet.destroy(lab)
        shutil.rmtree(lab, ignore_errors=True)
    return {"tree": label, "wall": wall, "per_host": per_host, "rc": rc}


def main() -> int:
    base = sys.argv[1] if len(sys.argv) > 1 else "HEAD~1"
    revision = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", base], check=True, capture_output=True,
                              text=True).stdout.strip()
    holder = Path(tempfile.mkdtemp(prefix="lu-base-", dir="/tmp"))
    rows: List[Dict[str, object]] = []
    try:
        old = worktree(revision, holder / "tree")
        rows.append(measure("before (%s)" % revision, old))
        rows.append(measure("after (working tree)", ROOT))
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(holder / "tree")], check=False,
                       capture_output=True)
        shutil.rmtree(holder, ignore_errors=True)
    lines = ["| tree | tasks per host (hv1, hv2, hv3) | rollout wall time | rc |", "|---|---|---|---|"]
    for row in rows:
        per_host = row["per_host"]
        assert isinstance(per_host, dict)
        counts = ", ".join(str(n) for n in per_host.values()) or "-"
        lines.append("| %s | %s | %.0f s | %s |" % (row["tree"], counts, row["wall"], row["rc"]))
    table = "\n".join(lines) + "\n\n%d local hosts, 1 VM each, one host per batch, `liveupdate_update_qemu=true` " \
        "(the lab's QEMU package update and a relaunch on every host).\n" % HOSTS
    print(table)
    out = ROOT / "bench" / "results" / "rollout-tasks.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(table)
    return 0 if all(row["rc"] == 0 for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
