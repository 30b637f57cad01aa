"""The host plan's rules against the hand-written truth table, and the journal's reading."""

from __future__ import annotations

import itertools
from dataclasses import fields
from pathlib import Path
from typing import Any, Dict, List

import pytest
import yaml

from ansible_collections.liveupdate.cpr.plugins.module_utils import host_plan

TABLE = yaml.safe_load((Path(__file__).parent / "host_plan_table.yml").read_text())
RESULT_COLUMNS = ("action", "reboot")


def _matches(row: Dict[str, Any], case: Dict[str, Any]) -> bool:
    for column, value in case.items():
        wanted = row.get(column, "*")
        if wanted != "*" and value not in (wanted if isinstance(wanted, list) else [wanted]):
            return False
    return True


def _every_case() -> List[Dict[str, Any]]:
    names = list(TABLE["columns"])
    return [dict(zip(names, values)) for values in itertools.product(*TABLE["columns"].values())]


def test_the_table_speaks_of_exactly_the_rules_inputs():
    assert list(TABLE["columns"]) == [f.name for f in fields(host_plan.Situation)]
    assert TABLE["columns"]["journal"] == list(host_plan.JOURNAL_STATES)
    for row in TABLE["rows"]:
        assert set(row) - set(TABLE["columns"]) == set(RESULT_COLUMNS), row
        assert row["action"] in host_plan.ACTIONS, row


def test_every_combination_matches_exactly_one_row_and_decide_agrees():
    cases = _every_case()
    assert len(cases) == 5 * 3 * 2 ** 7
    wrong = []
    for case in cases:
        rows = [row for row in TABLE["rows"] if _matches(row, case)]
        assert len(rows) == 1, "%d rows match %s: %s" % (len(rows), case, rows)
        decision = host_plan.decide(host_plan.Situation(**case))
        if (decision.action, decision.reboot) != (rows[0]["action"], rows[0]["reboot"]):
            wrong.append((case, rows[0], decision))
    assert not wrong, "%d combinations differ, first: %s" % (len(wrong), wrong[0])


@pytest.mark.parametrize(("phases_and_boots", "state"), [
    ([], "empty"),
    ([("restored", "b1"), ("save_failed", "b0")], "done"),
    ([("saved", "b1"), ("restored", "b0")], "this_boot"),
    ([("restore_failed", "b1"), ("restoring", "b1")], "this_boot"),
    ([("saved", "b0")], "earlier_boot"),
    ([("saved", "b0"), ("saved", "b1")], "mixed"),
])
def test_journal_state(phases_and_boots, state):
    records = [{"vm": "vm%d" % n, "phase": phase, "boot_id": boot} for n, (phase, boot) in enumerate(phases_and_boots)]
    assert host_plan.journal_state(records, "b1") == state


@pytest.mark.parametrize(("action", "reboot", "requested", "vm_method"), [
    ("cycle", "kexec", "kexec", "kexec"),
    ("cycle", "reboot", "kexec", "reboot"),          # the firmware-reboot fallback: RAM must survive that
    ("finish_cycle", "refused", "kexec", "kexec"),   # refused anyway; the VMs are still judged for what was asked
    ("relaunch", "none", "kexec", "none"),
    ("restore", "none", "reboot", "none"),
])
def test_the_reboot_each_vms_ram_must_survive(action, reboot, requested, vm_method):
    assert host_plan.vm_reboot_method(host_plan.Decision(action, reboot), requested) == vm_method
