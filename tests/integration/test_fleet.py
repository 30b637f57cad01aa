"""kernel-live-update.yml over a local fleet lab: failure paths stop the rollout and lose nothing.

The lab's hosts are directories on this machine (ansible_connection=local) running real QEMU VMs
from a copy of the QEMU binary; the "package update" installs a new build through the public
liveupdate_qemu_update_command variable. The happy path, with idempotence, is the molecule
`default` scenario.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from ansible_run import BIN, ROOT, run_playbook
from helpers import qemu_pids, release_fifo

from lab import local_fleet as fleet
from lab.testvm import TestVm, guest_disk, probe

PLAYBOOK = ROOT / "playbooks" / "kernel-live-update.yml"


@contextmanager
def local_fleet(hosts: int, vms: int):
    lab = Path(tempfile.mkdtemp(prefix="lu-fl-", dir="/tmp"))
    try:
        yield lab, fleet.create(lab, hosts=hosts, vms=vms)
    finally:
        fleet.destroy(lab)


@pytest.fixture
def small_fleet(disk):
    with local_fleet(hosts=2, vms=1) as made:
        yield made


@pytest.fixture
def three_hosts(disk):
    with local_fleet(hosts=3, vms=1) as made:
        yield made


def rollout(lab: Path, **extra):
    return run_playbook(PLAYBOOK, dict({"liveupdate_report_dir": str(lab / "reports")}, **extra),
                        inventory=lab / "inventory.yml")


def held_rollout(lab: Path, fifo: Path, **extra) -> subprocess.Popen:
    """A rollout whose QEMU update waits on fifo: it holds its hosts' locks, in its stage, until the fifo is written."""
    os.mkfifo(fifo)
    extra_vars = dict({"liveupdate_report_dir": str(lab / "reports"),
                       "liveupdate_qemu_update_command": ["timeout", "120", "cat", str(fifo)]}, **extra)
    return subprocess.Popen([str(BIN / "ansible-playbook"), "-i", str(lab / "inventory.yml"), str(PLAYBOOK),
                             "-e", json.dumps(extra_vars)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1"))


def wait_for_lock(lock: Path, phase: str, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            held = json.loads(lock.read_text())
        except (OSError, ValueError):
            held = {}
        if held.get("phase") == phase:
            return held
        time.sleep(0.2)
    raise AssertionError("no lock in phase %s at %s within %d s" % (phase, lock, timeout))


def release(fifo: Path, process: subprocess.Popen) -> str:
    release_fifo(fifo, timeout=150)  # the held rollout opens it once its stage runs the update command
    return process.communicate(timeout=300)[0]


def disk_image() -> Path:
    return guest_disk(ROOT / "build" / "cache")


def vm_of(lab: Path, machine) -> TestVm:
    return TestVm(machine["vm"], Path(machine["qmp_dir"]), Path("/dev/null"))


def test_blocker_on_one_host_stops_the_rollout_before_anything_pauses(small_fleet):
    lab, layout = small_fleet
    TestVm("hv2-blocked", lab / "hv2" / "qmp", disk_image(), binary=str(lab / "hv2" / "bin" / "qemu-system-x86_64"),
           extra=["-object", "memory-backend-file,id=peer,size=1M,mem-path=%s,share=on" % (lab / "peer"),
                  "-device", "ivshmem-plain,memdev=peer"]).start().wait_booted()
    pids_before = qemu_pids(lab)

    run = rollout(lab)
    assert run.rc != 0
    assert "ivshmem" in run.stdout and "nothing was paused" in run.stdout
    assert qemu_pids(lab) == pids_before, "no VM on any host was paused or restarted"
    for machine in layout["vms"]:
        state = probe(vm_of(lab, machine))
        assert state.status == "running" and state.nonce == machine["nonce"]
    assert not list(lab.glob("hv*/state/*.state")), "no state file anywhere"


def test_qemu_packages_apt_cannot_have_stop_the_rollout_in_the_fleet_wide_preflight(small_fleet):
    """QEMU updated by apt (no update command), from a release this machine's apt does not have: every host is refused
    in the preflight that runs before batch 1, so neither host's stage ever starts."""
    lab = small_fleet[0]
    pids_before = qemu_pids(lab)

    refused = rollout(lab, liveupdate_qemu_update_command=[], liveupdate_qemu_target_release="liveupdate-no-such-release")

    assert refused.rc != 0
    failed = [entry for entry in refused.entries if entry["status"] == "failed"]
    assert sorted(entry["host"] for entry in failed) == ["hv1", "hv2"], "both refused at once, batch 2's host too"
    for entry in failed:
        message = entry["result"]["msg"]
        assert "nothing was paused" in message and "cannot be updated from liveupdate-no-such-release" in message, message
    assert qemu_pids(lab) == pids_before, "no VM on any host was paused or restarted"
    assert not list(lab.glob("hv*/state/*.json")), "no journal record anywhere: no save began"


def test_a_broken_qemu_build_is_refused_by_the_cross_version_guard_before_anything_pauses(small_fleet):
    lab = small_fleet[0]
    package = lab / "packages" / "qemu-system-x86_64"
    package.write_text("#!/bin/sh\necho 'this QEMU build is broken' >&2\nexit 1\n")
    pids_before = qemu_pids(lab)

    refused = rollout(lab)

    assert refused.rc != 0
    assert "hv1 FAILED in phase relaunch" in refused.stdout and "nothing was paused" in refused.stdout
    assert "this QEMU build is broken" in refused.stdout and "VMs down: none" in refused.stdout
    assert qemu_pids(lab) == pids_before, "no VM on any host was paused or restarted"
    assert not list(lab.glob("hv*/state/*.state")), "no state file anywhere"


def test_failed_restore_stops_the_rollout_keeps_the_state_and_a_rerun_resumes(small_fleet):
    lab, layout = small_fleet
    package = lab / "packages" / "qemu-system-x86_64"
    good = package.read_bytes()
    (lab / "good-qemu").write_bytes(good)
    (lab / "good-qemu").chmod(0o755)
    # a build that passes the cross-version probe (private sockets) and fails with the VM's own: its restore fails
    package.write_text("#!/bin/sh\ncase \"$*\" in *%s/*) echo 'this QEMU build cannot open the VM sockets' >&2; exit 1;; "
                       "esac\nexec %s \"$@\"\n" % (lab / "hv1" / "qmp", lab / "good-qemu"))
    pids_before = qemu_pids(lab)

    failed = rollout(lab)
    assert failed.rc != 0
    assert "hv1 FAILED in phase relaunch" in failed.stdout and "VMs down: hv1-vm1" in failed.stdout
    journal = json.loads((lab / "hv1" / "state" / "hv1-vm1.json").read_text())
    assert journal["phase"] == "restore_failed" and (lab / "hv1" / "state" / "hv1-vm1.state").exists()
    assert qemu_pids(lab)["hv2-vm1"] == pids_before["hv2-vm1"], "the next batch never started"
    report = json.loads((lab / "reports" / "latest.json").read_text())
    statuses = {host["host"]: host["status"] for host in report["hosts"]}
    assert statuses == {"hv1": "failed"}
    assert report["hosts"][0]["vms_down"] == ["hv1-vm1"]

    package.write_bytes(good)  # the fixed package
    resumed = rollout(lab)
    assert resumed.rc == 0, resumed.stdout[-4000:]
    for machine in layout["vms"]:
        state = probe(vm_of(lab, machine))
        assert state.status == "running" and state.pattern_ok
        assert state.nonce == machine["nonce"], "%s resumed, not rebooted" % machine["vm"]
    report = json.loads((lab / "reports" / "latest.json").read_text())
    assert {host["host"]: host["action"] for host in report["hosts"]} == {"hv1": "restore", "hv2": "relaunch"}


def test_stale_lock_is_explained_and_broken_only_when_named(small_fleet):
    lab, layout = small_fleet
    state_dir = lab / "hv1" / "state"
    state_dir.mkdir(mode=0o700)
    (state_dir / "rollout.lock").write_text(json.dumps({
        "run_id": "dead-run", "owner": {"controller": "ops1", "user": "alice"}, "phase": "save",
        "heartbeat": 1_000_000_000, "started_iso": "2001-09-09T01:46:40Z"}))
    os.chmod(state_dir / "rollout.lock", 0o600)
    pids_before = qemu_pids(lab)

    refused = rollout(lab)
    assert refused.rc != 0
    assert "stale lock from run dead-run" in refused.stdout and "liveupdate_break_lock=dead-run" in refused.stdout
    assert qemu_pids(lab) == pids_before

    taken = rollout(lab, liveupdate_break_lock="dead-run")
    assert taken.rc == 0, taken.stdout[-4000:]
    assert not (state_dir / "rollout.lock").exists()
    for machine in layout["vms"]:
        assert probe(vm_of(lab, machine)).nonce == machine["nonce"]


def test_a_second_rollout_of_the_same_run_id_is_refused_while_the_first_holds_the_host(tmp_path):
    """Two invocations started in the same second once shared a run id, and with it the lock."""
    with local_fleet(hosts=1, vms=1) as (lab, layout):
        same_second = {"liveupdate_run_id": "20261201T213157Z"}
        first = held_rollout(lab, tmp_path / "hold", **same_second)
        try:
            held = wait_for_lock(lab / "hv1" / "state" / "rollout.lock", "stage")
            pids_before = qemu_pids(lab)
            second = subprocess.Popen([str(BIN / "ansible-playbook"), "-i", str(lab / "inventory.yml"), str(PLAYBOOK),
                                       "-e", json.dumps(dict(same_second, liveupdate_report_dir=str(lab / "reports")))],
                                      cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                      env=dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1"))
            try:
                second_output = second.communicate(timeout=180)[0]
            except subprocess.TimeoutExpired:
                second.kill()
                second_output = "(still running: it did not stop at the lock)\n" + second.communicate()[0]
            assert second.returncode not in (0, None), second_output[-3000:]
            assert "another rollout holds this host: run %s" % held["run_id"] in second_output, second_output[-3000:]
            assert "last phase 'stage'" in second_output
            assert qemu_pids(lab) == pids_before, "the second run paused or restarted nothing"
        finally:
            first_output = release(tmp_path / "hold", first)
        assert first.returncode == 0, first_output[-3000:]
        assert not (lab / "hv1" / "state" / "rollout.lock").exists()
        state = probe(vm_of(lab, layout["vms"][0]))
        assert state.status == "running" and state.nonce == layout["vms"][0]["nonce"]


def test_run_ids_are_unique_and_readable(small_fleet):
    lab = small_fleet[0]
    ids = set()
    for _run in range(2):
        run = rollout(lab, liveupdate_hosts="hv1")
        assert run.rc == 0, run.stdout[-3000:]
        ids.add(json.loads((lab / "reports" / "latest.json").read_text())["run"]["run_id"])
    assert len(ids) == 2, ids
    assert all(run_id.startswith(time.strftime("%Y%m%dT", time.gmtime())) for run_id in ids), ids


def test_a_host_that_fails_its_batch_preflight_releases_its_lock_and_a_plain_rerun_finishes(small_fleet, tmp_path):
    lab, layout = small_fleet
    first = held_rollout(lab, tmp_path / "hold")
    try:
        wait_for_lock(lab / "hv1" / "state" / "rollout.lock", "stage")
        # while batch 1 runs, a VM that cpr-reboot cannot save appears on hv2
        blocker = TestVm("hv2-blocked", lab / "hv2" / "qmp", disk_image(),
                         binary=str(lab / "hv2" / "bin" / "qemu-system-x86_64"),
                         extra=["-object", "memory-backend-file,id=peer,size=1M,mem-path=%s,share=on" % (lab / "peer"),
                                "-device", "ivshmem-plain,memdev=peer"]).start()
        blocker.wait_booted()
    finally:
        output = release(tmp_path / "hold", first)
    assert first.returncode != 0, output[-3000:]
    assert "ivshmem" in output
    assert not (lab / "hv2" / "state" / "rollout.lock").exists(), "hv2's failed preflight left its lock"
    assert not (lab / "hv1" / "state" / "rollout.lock").exists()

    os.kill(qemu_pids(lab)["hv2-blocked"], 9)
    time.sleep(0.5)
    (lab / "hv2" / "qmp" / "hv2-blocked.qmp").unlink(missing_ok=True)
    rerun = rollout(lab)
    assert rerun.rc == 0, rerun.stdout[-4000:]
    for machine in layout["vms"]:
        state = probe(vm_of(lab, machine))
        assert state.status == "running" and state.nonce == machine["nonce"]


def printed_plan(run) -> list:
    return next(entry["result"]["msg"] for entry in run.entries if entry["task"] == "Show the plan")


def test_the_printed_plan_follows_the_rollout_order_and_shuffle_is_refused(three_hosts):
    lab = three_hosts[0]
    prepared = run_playbook(ROOT / "playbooks" / "prepare-hosts.yml", inventory=lab / "inventory.yml")
    assert prepared.rc == 0, prepared.stdout[-3000:]
    for order, first in [("reverse_inventory", "hv3"), ("sorted", "hv1"), ("reverse_sorted", "hv3")]:
        plan = rollout_check(lab, liveupdate_order=order, liveupdate_batch=[1, 2])
        assert [line.split()[:3] for line in plan] == [
            ["batch", "1", first], ["batch", "2", "hv2"], ["batch", "2", "hv1" if first == "hv3" else "hv3"]], plan

    refused = run_playbook(PLAYBOOK, {"liveupdate_order": "shuffle"}, check=True, inventory=lab / "inventory.yml")
    assert refused.rc != 0
    assert "shuffle" in refused.stdout and "unseeded" in refused.stdout


def rollout_check(lab: Path, **extra) -> list:
    run = run_playbook(PLAYBOOK, extra, check=True, inventory=lab / "inventory.yml")
    assert run.rc == 0, run.stdout[-3000:]
    return printed_plan(run)
