"""Verify the molecule `default` scenario from outside the guests, with testinfra."""

from __future__ import annotations

import hashlib
import json
import os
import sys

LAB = os.environ.get("LIVEUPDATE_LAB", "/tmp/liveupdate-molecule-fleet")
PROJECT = os.environ.get("MOLECULE_PROJECT_DIRECTORY", ".")


def fleet(host):
    return json.loads(host.file("%s/fleet.json" % LAB).content_string)


def probe(host):
    """Every lab VM as seen now from outside: guest state over QMP, and the binary its QEMU runs."""
    # the lab hosts are local: the verifier's own Python (the venv with qemu.qmp) reads them
    output = host.check_output("cd %s && %s -m lab.local_fleet probe --dir %s", PROJECT, sys.executable, LAB)
    return {machine["vm"]: machine for machine in json.loads(output)}


def report(host):
    return json.loads(host.file("%s/reports/latest.json" % LAB).content_string)


def mine(host):
    name = host.backend.get_hostname()
    return [machine for machine in fleet(host)["vms"] if machine["host"] == name]


def test_every_vm_resumed_with_its_ram_intact(host):
    now = probe(host)
    for machine in mine(host):
        state = now[machine["vm"]]["now"]
        assert state["status"] == "running"
        assert state["nonce"] == machine["nonce"], "%s rebooted instead of resuming" % machine["vm"]
        assert state["counter"] > machine["counter"], "%s stopped counting" % machine["vm"]
        assert state["pattern_ok"], state["pattern_detail"]


def test_every_vm_runs_the_new_qemu_build(host):
    package = hashlib.sha256(host.file("%s/packages/qemu-system-x86_64" % LAB).content).hexdigest()
    now = probe(host)
    for machine in mine(host):
        running = now[machine["vm"]]
        assert running["exe"] == "%s/%s/bin/qemu-system-x86_64" % (LAB, machine["host"]), running["exe"]
        assert running["exe_sha256"] == package, "%s still runs the old build" % machine["vm"]


def test_report_is_well_formed_and_plausible(host):
    hosts = {entry["host"]: entry for entry in report(host)["hosts"]}
    entry = hosts[host.backend.get_hostname()]
    assert entry["status"] in ("updated", "unchanged") and not entry["error"] and entry["vms_down"] == []
    assert entry["action"] in ("relaunch", "none")
    for phase in entry["phases"].values():
        assert 0 <= phase["end"] - phase["start"] < 600
    assert host.file("%s/reports/latest.html" % LAB).contains("<svg")


def test_converge_relaunched_every_vm_within_its_batch(host):
    """The converge run (the report before latest) cycled every VM; no two batches had VMs down together."""
    reports = sorted(name for name in host.file("%s/reports" % LAB).listdir()
                     if name.startswith("liveupdate-") and name.endswith(".json"))
    converge = json.loads(host.file("%s/reports/%s" % (LAB, reports[0])).content_string)
    windows = {}
    for entry in converge["hosts"]:
        assert entry["status"] == "updated" and entry["vms_down"] == []
        for vm in entry["vms"]:
            assert vm["action"] == "relaunched" and 0 < vm["blackout_seconds"] < 30
            assert vm["paused_at"] < vm["resumed_at"]
            start, end = windows.get(entry["batch"], (vm["paused_at"], vm["resumed_at"]))
            windows[entry["batch"]] = (min(start, vm["paused_at"]), max(end, vm["resumed_at"]))
    assert sorted(windows) == [1, 2, 3], "batches [1, 2, 50%] of 6 hosts"
    ordered = [windows[batch] for batch in sorted(windows)]
    for earlier, later in zip(ordered, ordered[1:]):
        assert earlier[1] < later[0], "VMs of two batches were down at the same time"
