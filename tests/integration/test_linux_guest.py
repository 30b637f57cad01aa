"""Real Linux guests (Debian, systemd, sshd, qemu-guest-agent) through vm_relaunch, vm_save + vm_restore and the
boot unit's entry point: the guest keeps its boot, processes and files, and its clock is set after each resume.

Two guests boot once for the whole module, side by side: "lg-sync" keeps the default guest_time_sync=auto, and
"lg-drift" is restored with guest_time_sync=off where a case must show what a resume does to an unsynced clock.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, Iterator

import pytest
from ansible_run import ROOT, run_module, run_playbook

from lab import local_fleet
from lab.linux_guest import LinuxVm, ensure_image
from lab.planned_boot import allow_restore_at_boot, host_venv, run_entry_point
from lab.testvm import kill_all, qemu_available

# its clocks are checked to half a second over SSH: `make pytest` runs this file after the others, not beside them
pytestmark = pytest.mark.alone

# "measured the same way before and after, changed by at most 0.5 s across the resume" (the bound)
SYNCED_DRIFT = 0.5


class LinuxLab:
    def __init__(self) -> None:
        qemu_available()
        self.image = ensure_image()
        self.base = Path(tempfile.mkdtemp(prefix="lu-lg-", dir="/tmp"))
        self.qmp_dir = self.base / "qmp"
        self.state_dir = self.base / "state"
        self.vms = {name: LinuxVm(name, self.qmp_dir, self.image) for name in ("lg-sync", "lg-drift")}

    def boot(self) -> Dict[str, float]:
        for vm in self.vms.values():
            vm.start()
        with ThreadPoolExecutor(len(self.vms)) as pool:
            return dict(zip(self.vms, pool.map(lambda vm: vm.wait_booted(), self.vms.values())))

    def scope(self, **extra: object) -> Dict[str, object]:
        return dict({"qmp_dir": str(self.qmp_dir), "state_dir": str(self.state_dir)}, **extra)

    def cleanup(self) -> None:
        kill_all(self.base)
        for vm in self.vms.values():
            Path(vm.ram_path).unlink(missing_ok=True)
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture(scope="module")
def linux_lab() -> Iterator[LinuxLab]:
    lab = LinuxLab()
    try:
        booted = lab.boot()
        for name, vm in lab.vms.items():
            vm.plant("before" + name.replace("-", ""))
        print("real guests booted to SSH and agent in %s s" % booted)
        yield lab
    finally:
        lab.cleanup()


def kept(vm: LinuxVm, before: Dict[str, object]) -> Dict[str, object]:
    """The guest resumed, not rebooted: same boot id, uptime on, the process and the file from before; SSH works."""
    after = vm.facts()
    assert after["boot_id"] == before["boot_id"], "%s rebooted" % vm.name
    assert after["uptime"] > before["uptime"]
    assert after["marker"] == before["marker"] and after["marker"] != "none"
    assert after["sleeper"] == "alive", "%s lost the process started before the resume" % vm.name
    return after


def by_vm(result: Dict[str, object]) -> Dict[str, Dict[str, object]]:
    return {vm["vm"]: vm for vm in result["vms"]}  # type: ignore[index,union-attr]


def test_relaunch_keeps_a_real_guest_and_sets_its_clock(linux_lab: LinuxLab) -> None:
    vm = linux_lab.vms["lg-sync"]
    before, offset_before = vm.facts(), vm.clock_offset()

    run = run_module("vm_relaunch", linux_lab.scope(vms=[vm.name], force=True))

    assert run.rc == 0, run.result
    done = by_vm(run.result)[vm.name]
    assert done["action"] == "relaunched"
    assert done["guest_clock"]["synced"], done["guest_clock"]
    kept(vm, before)
    # stronger than "changed by at most 0.5 s": a guest booted from the RTC's whole seconds may start up to 1 s off,
    # and the sync takes that away too
    assert abs(vm.clock_offset()) <= SYNCED_DRIFT, offset_before
    print("vm_relaunch of a real guest: blackout %.3f s, clock %s" % (done["blackout_seconds"], done["guest_clock"]))


def test_save_wait_restore_sets_the_clock_and_without_sync_it_lags_by_the_blackout(linux_lab: LinuxLab) -> None:
    names = list(linux_lab.vms)
    before = {name: (vm.facts(), vm.clock_offset()) for name, vm in linux_lab.vms.items()}

    # lg-sync also goes through the passthrough guests' path: suspended to RAM before its save, woken after its load
    saved = run_module("vm_save", linux_lab.scope(reboot_method="none", guest_suspend_per_vm={"lg-sync": "always"}))
    assert saved.rc == 0, saved.result
    suspended = by_vm(saved.result)["lg-sync"]
    assert suspended["suspend_reason"] == "guest_suspend is always" and suspended["suspended_by_engine"]
    assert "suspended_by_engine" not in by_vm(saved.result)["lg-drift"]
    time.sleep(30)
    restored = run_module("vm_restore", {"state_dir": str(linux_lab.state_dir),
                                         "guest_time_sync_per_vm": {"lg-drift": "off"}})

    assert restored.rc == 0, restored.result
    vms = by_vm(restored.result)
    assert sorted(vms) == sorted(names)
    for name, vm in linux_lab.vms.items():
        kept(vm, before[name][0])
    synced, drift = vms["lg-sync"], vms["lg-drift"]
    # woken from S3, the guest's kernel rereads the RTC (which QEMU keeps at the host's time), so it is nearly right
    # even before the sync; lg-drift, neither suspended nor synced, shows the blackout
    assert synced["guest_clock"]["synced"] and abs(synced["guest_clock"]["offset_after_seconds"]) < SYNCED_DRIFT
    assert abs(linux_lab.vms["lg-sync"].clock_offset()) <= SYNCED_DRIFT, before["lg-sync"][1]
    assert drift["guest_clock"] == dict(drift["guest_clock"], synced=False, reason="not synced: guest_time_sync is off")
    lag = before["lg-drift"][1] - linux_lab.vms["lg-drift"].clock_offset()
    assert abs(lag - drift["blackout_seconds"]) <= 1.0, (lag, drift["blackout_seconds"])
    woke = linux_lab.vms["lg-sync"].ssh(["journalctl", "-b", "-k", "--no-pager", "-g", "PM: suspend exit"])
    assert "PM: suspend exit" in woke, "the guest's own log shows no resume from suspend"
    assert synced["wake_seconds"] is not None and drift["wake_seconds"] is None, "the wake is timed, and only there"
    clock = synced["guest_clock"]
    print("after a %.1f s blackout: suspended and synced, offset %+.3f s before the sync and %+.3f s after; "
          "unsynced %+.3f s; suspend took %.3f s, wake %.3f s" % (
              synced["blackout_seconds"], clock["offset_before_seconds"], clock["offset_after_seconds"], -lag,
              suspended["suspend_seconds"], synced["wake_seconds"]))


def test_the_boot_units_entry_point_sets_the_clocks_of_the_guests_it_resumes(linux_lab: LinuxLab) -> None:
    """The unit's own entry point, installed by restore_unit, restoring after a "planned kexec" that a private mount
    namespace shows it: /proc/cmdline carries the armed token and the boot id is another boot's."""
    venv = host_venv(linux_lab.base / "venv")
    installed = run_module("restore_unit", {"venv": str(venv), "state_dir": str(linux_lab.state_dir),
                                            "mint_token": True, "restore_at_boot": True})
    assert installed.rc == 0, installed.result
    # systemd is not PID 1 here, so no unit is active and the token says the unit may not restore; a systemd host's
    # stage mints it with restore_at_boot on
    token_file = linux_lab.state_dir / ".restore-token"
    minted = allow_restore_at_boot(linux_lab.state_dir)
    assert minted["restore_at_boot"] is False
    token = minted["token"]
    before = {name: vm.facts() for name, vm in linux_lab.vms.items()}
    # the declared persistent path stands in for a devdax device: this host never really reboots
    saved = run_module("vm_save", linux_lab.scope(reboot_method="kexec", persistent_paths=["/dev/shm"]))
    assert saved.rc == 0 and saved.result["restore_token_armed"], saved.result
    time.sleep(5)
    unit = run_entry_point(venv, linux_lab.state_dir, token, linux_lab.base)

    assert unit.returncode == 0, unit.stdout + unit.stderr
    print(unit.stdout)
    for name, vm in linux_lab.vms.items():
        record = json.loads((linux_lab.state_dir / (name + ".json")).read_text())
        assert record["restored_by"] == "boot unit"
        assert record["guest_clock"]["synced"] and record["guest_clock"]["offset_before_seconds"] < -4, record
        assert "%s: clock set from this host" % name in unit.stdout, unit.stdout
        kept(vm, before[name])

    # and taken off again, check -> real -> check: the entry point, its engine and the token go, the journal stays
    absent = {"venv": str(venv), "state_dir": str(linux_lab.state_dir), "state": "absent"}
    would = run_module("restore_unit", absent, check=True)
    assert would.rc == 0 and would.result["changed"] and (venv / "bin" / "liveupdate-cpr-restore").exists(), would.result
    removed = run_module("restore_unit", absent)
    assert removed.rc == 0 and removed.result["changed"], removed.result
    assert not (venv / "bin" / "liveupdate-cpr-restore").exists() and not (venv / "lib" / "liveupdate-cpr").exists()
    assert not token_file.exists() and all((linux_lab.state_dir / (name + ".json")).exists() for name in linux_lab.vms)
    assert not run_module("restore_unit", absent).result["changed"]


def by_host(lab: Path) -> Dict[str, Dict[str, object]]:
    return {str(machine["host"]): machine for machine in local_fleet.probe_all(lab)}


def test_a_fleet_rollout_over_real_guests_stops_at_a_failing_health_gate_and_a_rerun_finishes(tmp_path: Path) -> None:
    """`python -m lab.local_fleet create --guest linux`, two hosts of one real guest each, one host per batch (the
    default). hv1-vm1 is given a guest command that fails: the rollout stops after batch 1 with hv1's VM running on
    the new QEMU, and hv2 is not touched. The same command without that gate finishes the job."""
    lab = Path(tempfile.mkdtemp(prefix="lu-lf-", dir="/tmp"))
    try:
        made = local_fleet.create(lab, hosts=2, vms=1, guest="linux")
        before = by_host(lab)
        gate_log = lab / "host-gate.log"
        gates: Dict[str, object] = {
            "liveupdate_report_dir": str(lab / "reports"), "liveupdate_guest_time_sync": "required",
            "liveupdate_health_agent_ping": "required",
            "liveupdate_health_guest_command": "systemctl is-active ssh",  # a string, as an AWX survey answers
            "liveupdate_health_host_command": [sys.executable, "-c", "import os, sys; open(sys.argv[1], 'a').write("
                                               "os.environ['LIVEUPDATE_CPR_VM'] + '\\n')", str(gate_log)]}
        failing = dict(gates, liveupdate_health_per_vm={
            "hv1-vm1": {"guest_command": ["systemctl", "is-active", "liveupdate-no-such.service"]}})

        stopped = run_playbook(ROOT / "playbooks" / "kernel-live-update.yml", failing, inventory=lab / "inventory.yml")

        assert stopped.rc != 0, stopped.stdout[-3000:]
        failure = " ".join(str(r["msg"]) for r in stopped.results() if "FAILED in phase" in str(r.get("msg", "")))
        assert failure.startswith("hv1 FAILED in phase verify"), stopped.stdout[-3000:]
        assert "hv1-vm1: guest_command (`systemctl is-active liveupdate-no-such.service` exited 3 in the guest: " \
               "inactive)" in failure, failure
        assert "VMs down: none" in failure and "Every VM of the host runs" in failure, failure
        mid = by_host(lab)
        hv1 = mid["hv1"]["now"]
        assert made["guest"] == "linux" and mid["hv1"]["pid"] != before["hv1"]["pid"], "hv1's VM was relaunched"
        assert hv1["boot_id"] == before["hv1"]["now"]["boot_id"] and hv1["uptime"] > before["hv1"]["now"]["uptime"]
        assert abs(hv1["clock_offset"]) <= SYNCED_DRIFT, "the gate ran after the clock was set"
        assert (mid["hv2"]["pid"], mid["hv2"]["exe_sha256"]) == (before["hv2"]["pid"], before["hv2"]["exe_sha256"])
        assert sorted(p.name for p in (lab / "hv2" / "state").glob("*")) == [], "nothing on hv2: no lock, no journal"
        assert not (lab / "hv1" / "state" / "rollout.lock").exists(), "hv1's lock is released"
        assert gate_log.read_text() == "hv1-vm1\n"
        report = json.loads((lab / "reports" / "latest.json").read_text())
        assert [(h["host"], h["status"]) for h in report["hosts"]] == [("hv1", "failed")]
        row = report["hosts"][0]["vms"][0]
        assert row["vm"] == "hv1-vm1" and row["health"]["passed"] is False, row
        assert [g["gate"] for g in row["health"]["gates"] if not g["passed"]] == ["guest_command"]

        rerun = run_playbook(ROOT / "playbooks" / "kernel-live-update.yml", gates, inventory=lab / "inventory.yml")

        assert rerun.rc == 0, rerun.stdout[-3000:]
        after = by_host(lab)
        assert after["hv1"]["pid"] == mid["hv1"]["pid"], "hv1 was done: the rerun only checked its gates"
        assert after["hv2"]["pid"] != before["hv2"]["pid"] and after["hv2"]["exe_sha256"] == after["hv1"]["exe_sha256"]
        for host in ("hv1", "hv2"):
            now = after[host]["now"]
            assert now["boot_id"] == before[host]["now"]["boot_id"] and now["sleeper"] == "gone"
            assert abs(now["clock_offset"]) <= SYNCED_DRIFT, (host, now)
        assert gate_log.read_text() == "hv1-vm1\nhv1-vm1\nhv2-vm1\n"
        relaunched = [r for r in rerun.results() if "vms" in r and any(v.get("action") == "relaunched" for v in r["vms"])]
        assert relaunched and relaunched[0]["vms"][0]["guest_clock"]["synced"], relaunched
        summary = " ".join(str(r["msg"]) for r in rerun.results() if "Report: " in str(r.get("msg", "")))
        assert summary.count("1/1 passed") == 2, summary
    finally:
        local_fleet.destroy(lab)
