"""The lab's own pieces that other files depend on."""

from __future__ import annotations

import time
from pathlib import Path

import yaml

from lab import local_fleet as fleet

ROOT = Path(__file__).resolve().parents[3]


def test_molecule_inventory_is_the_lab_inventory():
    committed = yaml.safe_load((ROOT / "molecule" / "default" / "inventory.yml").read_text())
    assert committed == fleet.inventory("{{ lookup('env', 'LIVEUPDATE_LAB') }}", 6,
                                        "{{ lookup('env', 'MOLECULE_PROJECT_DIRECTORY') }}")


def test_kexec_molecule_inventory_is_the_host_lab_inventory():
    from lab.host import fleet as host_fleet

    committed = yaml.safe_load((ROOT / "molecule" / "kexec" / "inventory.yml").read_text())
    assert committed == host_fleet.inventory(
        [("hv1", 42301), ("hv2", 42302), ("hv3", 42303)],
        "/tmp/liveupdate-molecule-kexec/ssh/id_ed25519", ["hv3"])


def test_lab_pmem_ranges_of_nested_vms_do_not_overlap():
    from lab.host import inside

    argvs = [inside.vm_argv("hv1-vm%d" % i, 16, "dax", (i - 1) * 16) for i in (1, 2, 3)]
    offsets = [next(arg for arg in argv if arg.startswith("memory-backend-file")).split("offset=")[1] for argv in argvs]
    assert offsets == ["0M", "16M", "32M"]


def test_report_blackout_must_match_the_guests_own_stall():
    from lab.host.evidence import stall_agreement
    resumed_at = 1_700_000_000.4        # 22:13:20.4 UTC
    reported = {"blackout_seconds": 116.2, "resumed_at": resumed_at}
    seen = {"longest_stall": 116, "longest_stall_ended": int(resumed_at) % 86400}
    assert stall_agreement(reported, seen)["ok"]
    # the clock is a second coarse and may start a second behind the host's
    assert stall_agreement(reported, dict(seen, longest_stall=115, longest_stall_ended=seen["longest_stall_ended"] - 2))["ok"]
    # its first pass after the RESUME 2.8 s late on a starved host (molecule kexec, 2026-12-06): 148 s for 144.52 s
    late = {"blackout_seconds": 144.52, "resumed_at": resumed_at}
    assert stall_agreement(late, {"longest_stall": 148, "longest_stall_ended": (int(resumed_at) + 3) % 86400})["ok"]
    assert not stall_agreement(late, {"longest_stall": 148, "longest_stall_ended": int(resumed_at) % 86400})["ok"]
    short = stall_agreement(reported, dict(seen, longest_stall=60))
    assert not short["ok"] and "60 s" in short["why"]
    elsewhere = stall_agreement(reported, dict(seen, longest_stall_ended=seen["longest_stall_ended"] - 600))
    assert not elsewhere["ok"]
    # a blackout across midnight, UTC
    midnight = {"blackout_seconds": 10.0, "resumed_at": 1_700_006_400.5}   # 00:00:00.5 UTC
    assert stall_agreement(midnight, {"longest_stall": 10, "longest_stall_ended": 86399})["ok"]
    assert not stall_agreement({}, seen)["ok"]


def test_the_lab_stops_the_save_not_the_plan_that_holds_the_vm_lock_first(tmp_path):
    """The plan holds the host's VM lock while it reads the VMs, and so does the save: `stop-module --phase saving`
    waits, past a holder whose VMs are not being saved, for the one whose VM's record says saving."""
    import fcntl
    import json
    import multiprocessing
    import os
    import signal

    from lab.faults import wait_for
    from lab.host import inside

    state = tmp_path / "state"
    state.mkdir()
    (state / "web1.json").write_text(json.dumps({"phase": "restored"}))
    ready = multiprocessing.Event()

    def holder() -> None:  # as a module: holds the lock, and after a while writes a record in phase saving
        fd = os.open(str(state / ".vms.lock"), os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        ready.set()
        time.sleep(0.5)
        (state / "web1.json").write_text(json.dumps({"phase": "saving"}))
        time.sleep(30)

    process = multiprocessing.Process(target=holder)
    process.start()
    try:
        assert ready.wait(10)
        assert inside.vms_lock_waiters(str(state)) == []
        started = time.monotonic()
        stopped = inside.stop_module(str(state), phase="saving", timeout=10)
        assert stopped == {"pid": process.pid, "records": {"web1": "saving"}}
        assert time.monotonic() - started >= 0.3, "not stopped while its record still said restored"
        wait_for("the module stopped", lambda: Path("/proc/%d/stat" % process.pid).read_text().rsplit(")", 1)[1].split()[0]
                 == "T", timeout=10)
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.join()


def test_the_lock_watch_never_blocks_the_console_watch_and_reads_the_lock_when_the_login_answers(monkeypatch):
    """A login to a busy TCG host took over 20 s in CI and failed the fault harness: the lock is read in the
    background, a slow read is given up after LOCK_READ_TIMEOUT, and the save's lock is kept once seen."""
    from types import SimpleNamespace

    from lab import faults

    answers = iter([("5", '{"phase": "stage"}'), ("0.1", "not json"), ("0.1", '{"phase": "save", "run_id": "r"}')])

    class SlowLab:
        def ssh_argv(self, host, command):
            delay, text = next(answers)
            return ["sh", "-c", 'sleep "$1"; printf "%s" "$2"', "sh", delay, text]

    watch = faults.LockWatch(SlowLab(), SimpleNamespace(name="hv3"))
    started = time.monotonic()
    watch.poll()  # starts the 5 s read
    watch.poll()
    assert time.monotonic() - started < 1 and watch.lock == {}
    monkeypatch.setattr(faults, "LOCK_READ_TIMEOUT", 0.5)
    monkeypatch.setattr(faults, "LOCK_POLL", 0.1)
    try:
        time.sleep(0.6)
        watch.poll()  # the slow read is given up
        assert watch.read is None and watch.lock == {}
        deadline = time.monotonic() + 30
        while watch.lock.get("phase") != "save" and time.monotonic() < deadline:
            watch.poll()
            time.sleep(0.05)
    finally:
        watch.stop()
    assert watch.lock == {"phase": "save", "run_id": "r"}
    watch.poll()
    assert watch.read is None  # nothing more is read once the save's lock is seen
