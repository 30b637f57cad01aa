"""Verify the molecule `default` scenario from outside the guests, with testinfra."""

from __future__ import annotations

import json
import os

LAB = os.environ.get("LIVEUPDATE_LAB", "/tmp/liveupdate-molecule-fleet")
PROJECT = os.environ.get("MOLECULE_PROJECT_DIRECTORY", ".")


def fleet(host):
    return json.loads(host.file("%s/fleet.json" % LAB).content_string)


def probe(host):
    output = host.check_output("cd %s && %s -m lab.fleet probe --dir %s", PROJECT, host.check_output("command -v python3"), LAB)
    return {machine["vm"]: machine for machine in json.loads(output)}


def report(host):
    return json.loads(host.file("%s/reports/latest.json" % LAB).content_string)


def test_every_vm_resumed_with_its_ram_intact(host):
    name = host.backend.get_hostname()
    now = probe(host)
    for machine in fleet(host)["vms"]:
        if machine["host"] != name:
            continue
        state = now[machine["vm"]]["now"]
        assert state["status"] == "running"
        assert state["nonce"] == machine["nonce"], "%s rebooted instead of resuming" % machine["vm"]
        assert state["counter"] > machine["counter"], "%s stopped counting" % machine["vm"]
        assert state["pattern_ok"], state["pattern_detail"]


def test_every_vm_runs_the_new_qemu_build(host):
    name = host.backend.get_hostname()
    package = host.file("%s/packages/qemu-system-x86_64" % LAB)
    for machine in fleet(host)["vms"]:
        if machine["host"] == name:
            pid = host.check_output("pgrep -f -- 'guest=%s,'", machine["vm"]).split()[0]
            exe = host.file("/proc/%s/exe" % pid)
            assert host.check_output("readlink /proc/%s/exe", pid).endswith("/%s/bin/qemu-system-x86_64" % name)
            assert exe.md5sum == package.md5sum


def test_report_is_well_formed_and_plausible(host):
    data = report(host)
    hosts = {entry["host"]: entry for entry in data["hosts"]}
    entry = hosts[host.backend.get_hostname()]
    assert entry["status"] in ("updated", "unchanged") and not entry["error"] and entry["vms_down"] == []
    for phase in entry["phases"].values():
        assert 0 <= phase["end"] - phase["start"] < 600
    for vm in entry["vms"]:
        if vm.get("blackout_seconds") is not None:
            assert 0 < vm["blackout_seconds"] < 30
            assert vm["paused_at"] < vm["resumed_at"]
    assert host.file("%s/reports/latest.html" % LAB).contains("<svg")


def test_no_host_had_vms_down_outside_its_batch(host):
    data = report(host)
    windows = {}
    for entry in data["hosts"]:
        for vm in entry["vms"]:
            if vm.get("paused_at") and vm.get("resumed_at"):
                start, end = windows.get(entry["batch"], (vm["paused_at"], vm["resumed_at"]))
                windows[entry["batch"]] = (min(start, vm["paused_at"]), max(end, vm["resumed_at"]))
    ordered = [windows[batch] for batch in sorted(windows)]
    for earlier, later in zip(ordered, ordered[1:]):
        assert earlier[1] < later[0], "VMs of two batches were down at the same time"
    assert sorted({entry["batch"] for entry in data["hosts"]}) == [1, 2, 3, 4]
