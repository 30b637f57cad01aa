"""The end of `make test`'s output names the task that failed and its message, nested runs' messages unpacked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tools import failure_digest

NESTED_RUN = [
    "TASK [Save every VM] ***",
    "\x1b[0;32mok: [hv3]\x1b[0m",
    "TASK [Fault: cut the SSH connection in the save] ***",
    "\x1b[0;31mfatal: [hv3]: FAILED! => {\"changed\": false, \"msg\": \"the orphan left hv3-vm1 saving\\nrecords: x\"}\x1b[0m",
    "PLAY RECAP ***",
    "hv3 : ok=12 changed=3 unreachable=0 failed=1",
]


def outer_log(tmp_path: Path) -> Path:
    result = {"assertion": "__fallback_job.rc == 0", "changed": False, "msg": NESTED_RUN}
    lines = [
        "PLAY [Wait for hv3's chain] ***",
        "TASK [Wait for the fallback run to finish] ***",
        "ok: [localhost]",
        "TASK [Check it passed] ***",
        "  \x1b[31m│\x1b[0m fatal: [localhost]: FAILED! => " + json.dumps(result),
        "PLAY RECAP ***",
        "localhost : ok=1 changed=0 unreachable=0 failed=1",
        "ERROR    Ansible return code was 2, command was: ansible-playbook side_effect.yml",
        "make[1]: *** [Makefile:108: molecule-kexec] Error 2",
    ]
    log = tmp_path / "molecule-kexec.log"
    log.write_text("\n".join(lines) + "\n")
    return log


def test_a_nested_runs_failure_is_shown_with_its_task_and_the_outer_task_it_ran_in(tmp_path: Path) -> None:
    shown = failure_digest.digest(outer_log(tmp_path).read_text().splitlines())
    assert shown == [
        "TASK [Check it passed] ***",
        "  TASK [Fault: cut the SSH connection in the save] ***",
        "  fatal: [hv3]: FAILED! =>",
        "    the orphan left hv3-vm1 saving",
        "    records: x",
    ]


def test_pytests_failures_and_long_lines_are_cut() -> None:
    lines = ["tests/unit/test_x.py F", "E   AssertionError: " + "x" * 500, "FAILED tests/unit/test_x.py::test_y - boom"]
    shown = failure_digest.digest(lines, width=60)
    assert shown == ["FAILED tests/unit/test_x.py::test_y - boom"]
    assert all(len(line) <= 60 for line in failure_digest.digest(lines[:2], width=60))


def test_the_digest_is_bounded_and_says_so_when_nothing_failed(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    many = {"msg": ["line %d" % n for n in range(100)]}
    shown = failure_digest.digest(["TASK [t] ***", "fatal: [h]: FAILED! => " + json.dumps(many)], max_lines=10)
    assert len(shown) == 10 and shown[-1].strip() == "..."
    quiet = tmp_path / "ok.log"
    quiet.write_text("all good\n")
    assert failure_digest.main(["pytest", str(quiet)]) == 0
    assert "no failure line found" in capsys.readouterr().out
