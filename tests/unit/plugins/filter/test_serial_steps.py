"""serial_steps: the text a survey submits for the batch list becomes what `serial` takes."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from ansible.errors import AnsibleFilterError
from ansible_run import run_playbook

from ansible_collections.liveupdate.cpr.plugins.filter.batches import batches
from ansible_collections.liveupdate.cpr.plugins.filter.serial_steps import serial_steps


@pytest.mark.parametrize(("given", "expected"), [
    ("1,2,50%", [1, 2, "50%"]),
    (" 1 , 25% ,100%", [1, "25%", "100%"]),
    ("2", 2),
    ("25%", "25%"),
    ("12.5%", "12.5%"),
    # -e values and rollout.yml values pass through untouched
    ([1, "25%"], [1, "25%"]),
    (3, 3),
])
def test_steps(given, expected):
    assert serial_steps(given) == expected


@pytest.mark.parametrize("given", ["", "1,,50%", "0", "1,0%", "-1", "one", "1;2"])
def test_refuses_what_would_silently_become_one_batch(given):
    with pytest.raises(AnsibleFilterError, match="serial_steps"):
        serial_steps(given)


def test_ansible_batches_a_text_answer_as_the_plan_says():
    """A real play's serial keyword takes the filtered text, and forms the batches the --check plan shows."""
    hosts = ["h%d" % n for n in range(1, 8)]
    with tempfile.TemporaryDirectory() as tmp:
        inventory = Path(tmp) / "inventory.json"
        inventory.write_text(json.dumps({"all": {"hosts": {host: {"ansible_connection": "local"} for host in hosts}}}))
        playbook = Path(tmp) / "serial.yml"
        playbook.write_text(
            "- hosts: all\n  gather_facts: false\n  serial: \"{{ liveupdate_batch | liveupdate.cpr.serial_steps }}\"\n"
            "  tasks:\n    - ansible.builtin.debug: {var: ansible_play_batch}\n      run_once: true\n")
        run = run_playbook(playbook, {"liveupdate_batch": "1,2,50%"}, inventory=inventory)
    assert run.rc == 0, run.stdout
    formed = [result["ansible_play_batch"] for result in run.results()]
    assert formed == batches(hosts, serial_steps("1,2,50%")) == [["h1"], ["h2", "h3"], ["h4", "h5", "h6"], ["h7"]]
