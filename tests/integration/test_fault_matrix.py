"""The fault matrix on the local fleet: a fault at each phase boundary of kernel-live-update.yml, and a plain rerun.

Every case ends one of two ways: every VM running with its RAM whole (same nonce, pattern intact), or the VMs kept
saved with a report naming them, after which the same command, run again, finishes. Each fault lands where it is
named, checked from the journal and the lock's phase before anything is killed; things are killed by their pids:
- the controller is ansible-playbook and its forked workers, never the module they started on the host, which a
  real controller's death does not stop either;
- a module is found as the process that holds the host's VM lock (STATE_DIR/.vms.lock), stopped with SIGSTOP once
  the journal shows the phase the case names, and only then killed.
The host-level faults (a kill during the reboot wait, a host that never comes back) are in the molecule kexec
scenario, which reboots for real.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, List

import pytest
from ansible_run import BIN, ROOT
from helpers import assert_resumed, qemu_pids, release_fifo

from lab import faults
from lab import local_fleet as fleet
from lab.faults import wait_for
from lab.host import inside
from lab.testvm import GuestState, TestVm, guest_disk, kill_all

PLAYBOOK = ROOT / "playbooks" / "kernel-live-update.yml"
# A VM whose 64 MiB of RAM go into its state file, saved at this rate: its save takes ~8 s, long enough to land a
# fault in, and its restore loads them. A rerun's save goes at full speed again.
SLOW_SAVE_BYTES_PER_S = 8 << 20
FULL_SPEED_BYTES_PER_S = 1 << 30
WAIT = 120.0


class Lab:
    """One local-fleet host, hv1, with the VMs a case gives it, and a rollout that can be held and killed."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.home = base / "hv1"
        self.state = self.home / "state"
        self.hold = base / "hold"
        self.fifo = base / "hold.fifo"
        self.vms: Dict[str, TestVm] = {}
        self.before: Dict[str, GuestState] = {}

    def vm(self, name: str, ram_in_state: bool = True, slow_save: bool = False) -> TestVm:
        vm = TestVm(name, self.home / "qmp", guest_disk(ROOT / "build" / "cache"),
                    binary=str(self.home / "bin" / "qemu-system-x86_64"), ram="memfd" if ram_in_state else "shm").start()
        self.before[name] = vm.wait_booted()
        self.vms[name] = vm
        if slow_save:
            self.save_rate(name, SLOW_SAVE_BYTES_PER_S)
        return vm

    def save_rate(self, name: str, rate: int) -> None:
        monitor = self.vms[name].qmp()
        try:
            monitor.cmd("migrate-set-parameters", **{"max-bandwidth": rate})
        finally:
            monitor.close()

    def update_command(self, hold: str) -> List[str]:
        """The lab's QEMU package update, held on a fifo (while the hold file exists) before or after it installs."""
        script = self.base / "update-qemu.sh"
        wait = "if [ -e '%s' ]; then timeout %d cat '%s'; fi\n" % (self.hold, WAIT, self.fifo)
        install = "'%s' '%s' '%s' '%s'\n" % (
            BIN / "python", ROOT / "lab" / "update_qemu.py", self.base / "packages" / "qemu-system-x86_64",
            self.home / "bin" / "qemu-system-x86_64")
        script.write_text("#!/bin/sh\nset -e\n" + (wait + install if hold == "before" else install + wait))
        script.chmod(0o755)
        return [str(script)]

    def extra_vars(self, **extra: object) -> Dict[str, object]:
        # a cycle (save, reboot method none, restore), as a kernel update would make, on RAM the state file holds
        return dict({"liveupdate_report_dir": str(self.base / "reports"), "liveupdate_force": True,
                     "liveupdate_ram_policy": "save_ram"}, **extra)

    def start(self, **extra: object) -> subprocess.Popen:
        return subprocess.Popen([str(BIN / "ansible-playbook"), "-i", str(self.base / "inventory.yml"), str(PLAYBOOK),
                                 "-e", json.dumps(self.extra_vars(**extra))], cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True,
                                env=dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1",
                                         PATH="%s:%s" % (BIN, os.environ.get("PATH", ""))))

    def run(self, **extra: object) -> tuple[int, str]:
        process = self.start(**extra)
        output = process.communicate(timeout=600)[0]
        return process.returncode, output

    def lock(self) -> dict:
        try:
            return json.loads((self.state / "rollout.lock").read_text())
        except (OSError, ValueError):
            return {}

    def record(self, vm: str) -> dict:
        try:
            return json.loads((self.state / (vm + ".json")).read_text())
        except (OSError, ValueError):
            return {}

    def report(self) -> dict:
        return json.loads((self.base / "reports" / "latest.json").read_text())

    def assert_all_resumed(self) -> None:
        for name, vm in self.vms.items():
            assert_resumed(vm, self.before[name])


@contextmanager
def one_host() -> Iterator[Lab]:
    base = Path(tempfile.mkdtemp(prefix="lu-fm-", dir="/tmp"))
    try:
        fleet.create(base, hosts=1, vms=0)
        yield Lab(base)
    finally:
        kill_all(base / "hv1" / "qmp")
        if os.path.ismount(base / "hv1" / "state"):
            subprocess.run(["umount", "-l", str(base / "hv1" / "state")], check=False)
        fleet.destroy(base)


def pids_mentioning(text: str) -> List[int]:
    return [pid for pid in faults.all_pids() if text in " ".join(faults.argv_of(pid))]  # [] for one gone meanwhile


def kill_controller(playbook: subprocess.Popen) -> List[int]:
    pids = faults.kill_controller(playbook)
    playbook.communicate(timeout=30)
    return pids


def stop_module_in(lab: Lab, vm: str, phase: str) -> int:
    """SIGSTOP the module that holds the VM lock once vm's journal record is in ``phase``; its pid.
    In a save, once QEMU has begun the migration too (its state file exists): the record is written just before."""
    if phase == "saving":
        wait_for("state file of %s" % vm, (lab.state / (vm + ".state")).exists)
    stopped = inside.stop_module(str(lab.state), vm=vm, phase=phase, timeout=WAIT)
    assert stopped["records"].get(vm) == phase, "the fault landed too late: %s" % stopped["records"]
    return stopped["pid"]


def fill(path: Path) -> None:
    """Another writer: it takes every byte left on path's filesystem."""
    with open(path, "wb") as handle:
        try:
            while True:
                handle.write(b"\xff" * (1 << 20))
                handle.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    assert os.statvfs(path.parent).f_bavail < 256


def assert_took_over(output: str, killed: List[int]) -> None:
    assert "took over the lock of run" in output and "pid %d) is gone" % killed[0] in output, output[-3000:]


# -- the controller killed ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("hold", ["before", "after"], ids=["after-the-preflight", "during-the-stage"])
def test_the_controller_killed_before_anything_pauses_loses_nothing_and_a_rerun_finishes(disk, hold):
    """Killed with the preflight done and the package not yet installed, or installed and the stage unfinished."""
    with one_host() as lab:
        lab.vm("hv1-vm1", ram_in_state=False)
        pids = qemu_pids(lab.base)
        package = (lab.home / "bin" / "qemu-system-x86_64").read_bytes()
        os.mkfifo(lab.fifo)
        lab.hold.touch()
        command = lab.update_command(hold)
        first = lab.start(liveupdate_qemu_update_command=command)
        wait_for("lock in phase stage", lambda: lab.lock().get("phase") == "stage", interval=0.1)
        held = wait_for("the update command on its fifo", lambda: pids_mentioning(str(lab.fifo)), interval=0.1)
        installed = (lab.home / "bin" / "qemu-system-x86_64").read_bytes() != package
        assert installed == (hold == "after"), "the fault landed at the boundary it names"
        killed = kill_controller(first)

        assert qemu_pids(lab.base) == pids and not list(lab.state.glob("*.json")), "nothing was paused"
        assert lab.lock()["phase"] == "stage", "the killed run's lock is left"
        lab.hold.unlink()
        rc, output = lab.run(liveupdate_qemu_update_command=command)

        assert rc == 0, output[-4000:]
        assert_took_over(output, killed)
        lab.assert_all_resumed()
        assert qemu_pids(lab.base)["hv1-vm1"] != pids["hv1-vm1"], "saved and restored by the rerun"
        assert not (lab.state / "rollout.lock").exists()
        # what the killed run left on the host: its update command, still waiting; released, it changes nothing
        release_fifo(lab.fifo, timeout=10)  # it has held the fifo open since before the kill, unless its timeout ended
        wait_for("the orphaned update command to end", lambda: not any(os.path.exists("/proc/%d" % p) for p in held))
        assert qemu_pids(lab.base) == {"hv1-vm1": qemu_pids(lab.base)["hv1-vm1"]}
        lab.assert_all_resumed()


def test_the_controller_and_its_save_killed_mid_save_leave_the_vm_running_and_a_rerun_saves_it_afresh(disk):
    """After the VM's journal record, during its migration, before its quit."""
    with one_host() as lab:
        lab.vm("hv1-vm1", slow_save=True)
        pid = qemu_pids(lab.base)["hv1-vm1"]
        first = lab.start()
        module = stop_module_in(lab, "hv1-vm1", "saving")
        assert qemu_pids(lab.base).get("hv1-vm1") == pid, "the fault landed before the quit"
        killed = kill_controller(first)
        os.kill(module, signal.SIGKILL)

        # the VM is mid-migration or paused after it, with its record still saving: not lost, not yet back
        assert lab.record("hv1-vm1")["phase"] == "saving" and qemu_pids(lab.base)["hv1-vm1"] == pid
        lab.save_rate("hv1-vm1", FULL_SPEED_BYTES_PER_S)
        rc, output = lab.run()

        assert rc == 0, output[-4000:]
        assert_took_over(output, killed)
        lab.assert_all_resumed()
        assert lab.record("hv1-vm1")["phase"] == "restored"
        assert (lab.state / "hv1-vm1.state.partial").exists(), "the interrupted save's file was set aside"
        assert lab.report()["hosts"][0]["status"] == "updated"


def test_the_controller_and_its_restore_killed_mid_restore_keep_the_vm_saved_and_a_rerun_restores_it(disk):
    with one_host() as lab:
        lab.vm("hv1-vm1")
        first = lab.start()
        module = stop_module_in(lab, "hv1-vm1", "restoring")
        killed = kill_controller(first)
        os.kill(module, signal.SIGKILL)

        record = lab.record("hv1-vm1")
        assert record["phase"] == "restoring" and (lab.state / "hv1-vm1.state").exists(), "kept saved"
        rc, output = lab.run()

        assert rc == 0, output[-4000:]
        assert_took_over(output, killed)
        lab.assert_all_resumed()
        assert lab.record("hv1-vm1")["phase"] == "restored" and not (lab.state / "hv1-vm1.state").exists()


def test_the_controller_killed_mid_save_leaves_its_save_running_which_the_rerun_waits_for_and_takes_up(disk):
    """What a controller's death really leaves on the host: its module, which runs on. The rerun's save waits on the
    host's VM lock while the orphan finishes; then it finds the VM saved and the rollout goes on from there."""
    with one_host() as lab:
        lab.vm("hv1-vm1", slow_save=True)
        pid = qemu_pids(lab.base)["hv1-vm1"]
        first = lab.start()
        orphan = stop_module_in(lab, "hv1-vm1", "saving")
        killed = kill_controller(first)
        rerun = lab.start()
        try:
            waiting = wait_for("the rerun's module on the VM lock", lambda: inside.vms_lock_waiters(str(lab.state))
                               or rerun.poll() is not None, timeout=WAIT, interval=0.1)
            assert rerun.poll() is None, "the rerun ended without waiting: %s" % rerun.communicate()[0][-4000:]
            assert orphan not in waiting and lab.record("hv1-vm1")["phase"] == "saving", "the orphan still holds it"
            os.kill(orphan, signal.SIGCONT)
            output = rerun.communicate(timeout=600)[0]
        finally:
            if rerun.poll() is None:
                kill_controller(rerun)
            if any("AnsiballZ" in word for word in faults.argv_of(orphan)):  # a case that failed early
                with contextlib.suppress(ProcessLookupError):
                    os.kill(orphan, signal.SIGKILL)

        assert rerun.returncode == 0, output[-4000:]
        assert_took_over(output, killed)
        lab.assert_all_resumed()
        record = lab.record("hv1-vm1")
        assert record["phase"] == "restored" and qemu_pids(lab.base)["hv1-vm1"] != pid, record
        assert not (lab.state / "hv1-vm1.state.partial").exists(), "the orphan's finished save was used, not redone"
        assert lab.report()["hosts"][0]["status"] == "updated"


# -- faults on the host ---------------------------------------------------------------------------------------------
def test_qemu_killed_during_its_restore_keeps_the_vm_saved_reports_it_and_a_rerun_restores_it(disk):
    """After the new QEMU's launch, before migrate-incoming completes."""
    with one_host() as lab:
        lab.vm("hv1-vm1")
        old = qemu_pids(lab.base)["hv1-vm1"]
        first = lab.start()
        wait_for("journal record in phase restoring", lambda: lab.record("hv1-vm1").get("phase") == "restoring")
        new = wait_for("the restoring QEMU", lambda: qemu_pids(lab.base).get("hv1-vm1") not in (None, old)
                       and qemu_pids(lab.base)["hv1-vm1"])
        # frozen, then measured, then killed: the load reads the whole state file, so a QEMU that has read less in
        # all cannot have completed its migrate-incoming
        os.kill(new, signal.SIGSTOP)
        read, size = faults.bytes_read(new), (lab.state / "hv1-vm1.state").stat().st_size
        os.kill(new, signal.SIGKILL)
        assert read < size, "the fault landed too late: QEMU had read %d bytes, its state file has %d" % (read, size)
        output = first.communicate(timeout=600)[0]

        assert first.returncode != 0
        record = lab.record("hv1-vm1")
        assert record["phase"] == "restore_failed" and "restored" not in record["timestamps"], record
        assert (lab.state / "hv1-vm1.state").exists()
        assert "VMs down: hv1-vm1" in output, output[-3000:]
        assert lab.report()["hosts"][0]["vms_down"] == ["hv1-vm1"]
        rc, output = lab.run()

        assert rc == 0, output[-4000:]
        lab.assert_all_resumed()


def test_the_state_disk_filled_by_another_writer_during_the_save_leaves_the_vm_running_and_a_rerun_finishes(disk):
    """The state dir's filesystem fills after every preflight passed, while the VM's state is being written."""
    with one_host() as lab:
        lab.state.mkdir(mode=0o700)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200m,mode=0700", "tmpfs", str(lab.state)], check=True)
        lab.vm("hv1-vm1", slow_save=True)
        pid = qemu_pids(lab.base)["hv1-vm1"]
        first = lab.start()
        wait_for("journal record in phase saving", lambda: lab.record("hv1-vm1").get("phase") == "saving")
        filler = lab.state / "another-writer"
        fill(filler)
        output = first.communicate(timeout=600)[0]

        assert first.returncode != 0
        record = lab.record("hv1-vm1")
        assert record["phase"] == "save_failed" and "No space left" in record["error"], record
        assert qemu_pids(lab.base)["hv1-vm1"] == pid and "VMs down: none" in output, output[-3000:]
        lab.assert_all_resumed()
        filler.unlink()
        lab.save_rate("hv1-vm1", FULL_SPEED_BYTES_PER_S)
        rc, output = lab.run()

        assert rc == 0, output[-4000:]
        lab.assert_all_resumed()
        assert lab.record("hv1-vm1")["phase"] == "restored"
