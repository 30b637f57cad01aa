"""vm_restore: the state file is checked before QEMU starts, and deleted only once the VM runs again."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from engine_fakes import qemu, session_class

from ansible_collections.liveupdate.cpr.plugins.module_utils import journal as jr
from ansible_collections.liveupdate.cpr.plugins.module_utils import restore
from ansible_collections.liveupdate.cpr.plugins.module_utils.errors import RestoreError, ScopeError
from ansible_collections.liveupdate.cpr.plugins.module_utils.launcher import Launched
from ansible_collections.liveupdate.cpr.plugins.module_utils.restore import RestoreOptions

PAUSED_AT, RESUMED_AT = 1000.0, 1000.25


@pytest.fixture
def journal(tmp_path):
    journal = jr.Journal(str(tmp_path / "state"))
    journal.ensure()
    return journal


def saved(journal, vm, phase=jr.SAVED, content=b"device state", **fields):
    """A journal record as vm_save leaves it, with its state file beside it."""
    state_file = journal.state_path(vm)
    with open(state_file, "wb") as handle:
        handle.write(content)
    record = {"vm": vm, "state_file": state_file, "state_sha256": jr.sha256_of(state_file), "state_complete": True,
              "qmp": {"path": "/run/qmp/%s.sock" % vm, "form": "qmp"}, "x_ignore_shared": False, "ram_backends": [],
              "argv": ["qemu", "-name", vm, "-incoming", "file:/old"],
              "launch_argv": ["qemu", "-name", vm, "-machine", "pc-q35-9.2"],
              "environ": {}, "run_state_at_save": "running", "paused_at": PAUSED_AT}
    record.update(fields)
    return journal.set_phase(record, phase)


class FakeQemu:
    """What restore_one talks to: the launcher, QMP and the migration calls, all without QEMU."""

    def __init__(self, journal, status_after_load="paused", load_status="completed", alive=True):
        self.journal = journal
        self.status = status_after_load
        self.load_status = load_status
        self.alive = alive
        self.sent = []
        self.launched_argv = None
        self.launch_timeout = None
        self.phase_at_launch = None
        self.state_file_at_load = None

    def install(self, monkeypatch):
        fake = self

        def wait_for(_session, predicate, timeout, interval=0.02, what="condition", wake_on_events=False):
            assert predicate(_session), "timed out waiting for %s" % what
            return True

        session = session_class(fake, wait_for=wait_for,
                                last_event_time=lambda _session, name: RESUMED_AT if name == "RESUME" else None)

        def launch(record, argv, log, timeout=60.0, early_boot=False):
            fake.launched_argv = list(argv)
            fake.launch_timeout = timeout
            fake.phase_at_launch = fake.journal.read(record["vm"])["phase"]
            return Launched(pid=777, unit=None, log=log, method="fork")

        def load_from(session, state_file, timeout):
            with open(state_file, "rb") as handle:
                fake.state_file_at_load = handle.read()
            return {"status": fake.load_status, "error-desc": "Unknown savevm section"} if fake.load_status != "completed" \
                else {"status": "completed"}

        monkeypatch.setattr(restore, "QmpSession", session)
        monkeypatch.setattr(restore, "launch", launch)
        monkeypatch.setattr(restore.migration, "set_cpr_mode", lambda session, x_ignore_shared: None)
        monkeypatch.setattr(restore.migration, "load_from", load_from)
        monkeypatch.setattr(restore, "process_exists", lambda pid: fake.alive)
        return self


def no_launch(*_args, **_kwargs):
    pytest.fail("QEMU was started")


# -- the state file check -------------------------------------------------------------------------------------
def test_a_state_file_that_does_not_match_its_hash_is_refused_before_qemu_starts(journal, monkeypatch):
    record = saved(journal, "web1")
    with open(record["state_file"], "ab") as handle:
        handle.write(b"bit rot")
    monkeypatch.setattr(restore, "launch", no_launch)

    with pytest.raises(RestoreError, match="does not match its journal record") as refused:
        restore.restore_one(record, journal, keep_state=False, timeout=5)

    assert refused.value.vm == "web1"
    assert journal.read("web1")["phase"] == jr.SAVED
    assert Path(record["state_file"]).read_bytes() == b"device statebit rot"


def test_a_missing_state_file_is_refused(journal, monkeypatch):
    record = saved(journal, "web1")
    monkeypatch.setattr(restore, "launch", no_launch)
    os.unlink(record["state_file"])

    with pytest.raises(RestoreError, match="is missing"):
        restore.restore_one(record, journal, keep_state=False, timeout=5)
    assert journal.read("web1")["phase"] == jr.SAVED


def test_missing_guest_ram_is_refused_only_when_the_ram_is_not_in_the_state_file(journal, tmp_path):
    backends = [{"id": "ram0", "type": "memory-backend-file", "mem_path": str(tmp_path / "gone"), "share": True}]

    with pytest.raises(RestoreError, match=r"guest RAM backing .*gone is missing"):
        restore.verify_state_file(saved(journal, "pmem", x_ignore_shared=True, ram_backends=backends))

    restore.verify_state_file(saved(journal, "inram", x_ignore_shared=False, ram_backends=backends))


def test_a_launch_waits_the_restores_time_for_a_slow_qemu_not_a_fixed_minute(journal, monkeypatch):
    # seen in the lab: two QEMUs starting on a loaded TCG host at boot served their sockets after more than 60 s
    fake = FakeQemu(journal).install(monkeypatch)
    restore.restore_one(saved(journal, "web1"), journal, keep_state=False, timeout=600)
    assert fake.launch_timeout == 600
    restore.restore_one(saved(journal, "web2"), journal, keep_state=False, timeout=5)
    assert fake.launch_timeout == 60


def test_is_same_vm_needs_both_name_and_socket():
    record = {"vm": "web1", "qmp": {"path": "/run/qmp/web1.sock"}}
    assert restore.is_same_vm(qemu("web1"), record)
    assert not restore.is_same_vm(qemu("web2"), record)
    other_dir = qemu("web1")
    other_dir = qemu("web1", qmp="/run/other/web1.sock")
    assert not restore.is_same_vm(other_dir, record)
    other_dir.qmp = None
    assert not restore.is_same_vm(other_dir, record)


# -- restore_one ------------------------------------------------------------------------------------------------
def test_a_restore_journals_restoring_before_launch_and_deletes_the_state_file_only_at_the_end(journal, monkeypatch):
    fake = FakeQemu(journal).install(monkeypatch)
    record = saved(journal, "web1")

    done = restore.restore_one(record, journal, keep_state=False, timeout=5)

    assert fake.phase_at_launch == jr.RESTORING
    assert fake.launched_argv == ["qemu", "-name", "web1", "-machine", "pc-q35-9.2", "-incoming", "defer"]
    assert fake.state_file_at_load == b"device state"
    assert "cont" in fake.sent  # it ran at save time, so it runs again
    assert done["phase"] == jr.RESTORED
    assert done["pid"] == 777
    assert done["blackout_seconds"] == pytest.approx(RESUMED_AT - PAUSED_AT)
    assert done["kept_state_file"] is None
    assert journal.read("web1")["phase"] == jr.RESTORED
    assert not os.path.exists(record["state_file"])


def test_a_qemu_the_restore_started_gets_the_restores_timeout_to_greet(journal, monkeypatch):
    """On a host still booting, a new QEMU may greet far later than the 10 s that tell a held monitor (the boot
    unit gave up on both of a lab host's VMs that way)."""
    FakeQemu(journal).install(monkeypatch)
    greeting_waits = []
    fake_session = restore.QmpSession

    def session(path, vm=None, **kwargs):
        greeting_waits.append(kwargs.get("connect_timeout"))
        return fake_session(path, vm)

    monkeypatch.setattr(restore, "QmpSession", session)
    restore.restore_one(saved(journal, "web1"), journal, keep_state=False, timeout=120)
    assert greeting_waits == [120]


def test_a_vm_paused_at_save_stays_paused_and_keep_state_keeps_the_file(journal, monkeypatch):
    fake = FakeQemu(journal).install(monkeypatch)
    record = saved(journal, "web1", run_state_at_save="paused")

    done = restore.restore_one(record, journal, keep_state=True, timeout=5)

    assert "cont" not in fake.sent
    assert fake.status == "paused"
    assert done["kept_state_file"] == record["state_file"]
    assert Path(record["state_file"]).read_bytes() == b"device state"


def test_a_failed_load_keeps_the_state_file_and_journals_the_failure_with_the_pid(journal, monkeypatch):
    FakeQemu(journal, load_status="failed").install(monkeypatch)
    record = saved(journal, "web1")

    with pytest.raises(RestoreError, match="Unknown savevm section") as failed:
        restore.restore_one(record, journal, keep_state=False, timeout=5)

    assert "pid 777" in failed.value.fix
    on_disk = journal.read("web1")
    assert on_disk["phase"] == jr.RESTORE_FAILED
    assert on_disk["pid"] == 777
    assert "Unknown savevm section" in on_disk["error"]
    assert Path(record["state_file"]).read_bytes() == b"device state"


def test_a_qemu_that_dies_right_after_its_restore_keeps_the_state_file(journal, monkeypatch):
    FakeQemu(journal, alive=False).install(monkeypatch)
    record = saved(journal, "web1")

    with pytest.raises(RestoreError, match="exited right after its restore"):
        restore.restore_one(record, journal, keep_state=False, timeout=5)

    assert Path(record["state_file"]).read_bytes() == b"device state"
    assert journal.read("web1")["phase"] in jr.AWAITING_RESTORE


# -- restore_host: which records are restored -----------------------------------------------------------------
@pytest.fixture
def host(journal, monkeypatch):
    """restore_host with the given running QEMUs and restore_one recorded, not run."""
    restored = []

    def restore_one(record, journal_, keep_state, timeout, restored_by="ansible"):
        restored.append(record["vm"])
        return journal_.set_phase(record, jr.RESTORED)

    monkeypatch.setattr(restore, "restore_one", restore_one)

    def run(*running, **options):
        monkeypatch.setattr(restore, "running_qemus", lambda: list(running))
        result = restore.restore_host(RestoreOptions(state_dir=journal.state_dir, **options))
        return result, restored
    return run


def actions(result):
    return {vm["vm"]: vm["action"] for vm in result["vms"]}


def test_only_saved_records_are_restored_and_the_others_are_reported(journal, host):
    saved(journal, "web1")
    saved(journal, "db1", phase=jr.RESTORE_FAILED)
    saved(journal, "done", phase=jr.RESTORED)
    saved(journal, "failed", phase=jr.SAVE_FAILED)

    result, restored = host()

    assert sorted(restored) == ["db1", "web1"]
    assert actions(result) == {"web1": "restored", "db1": "restored", "done": "already_running", "failed": "not_saved"}
    assert result["changed"] is True
    assert all("environ" not in vm and "launch_argv" not in vm for vm in result["vms"])


def test_an_unfinished_save_refuses_the_restore(journal, host):
    saved(journal, "web1")
    saved(journal, "half", phase=jr.SAVING, state_complete=False)

    with pytest.raises(RestoreError, match="save was under way") as refused:
        host()
    assert refused.value.vm == "half"


def test_unknown_names_are_refused_naming_what_the_journal_has(journal, host):
    saved(journal, "web1")
    with pytest.raises(ScopeError, match=re.escape("no record of ghost. It has: web1")):
        host(vms=["web1", "ghost"])


def test_a_qemu_of_the_same_vm_already_running_refuses_its_saved_record(journal, host):
    saved(journal, "web1")
    with pytest.raises(RestoreError, match=re.escape("already runs (pid 4242) while its journal says saved")):
        host(qemu("web1"))


def test_an_interrupted_restore_is_restored_again_by_the_rerun(journal, host):
    saved(journal, "web1", phase=jr.RESTORING)
    result, restored = host(qemu("web1", pid=99))
    assert restored == ["web1"], "restore_one finishes it, adopting or replacing the QEMU left behind"
    assert actions(result) == {"web1": "restored"}


def test_a_loaded_vm_left_paused_by_a_killed_restore_is_adopted_resumed_and_its_state_file_deleted(journal, monkeypatch):
    record = saved(journal, "web1", phase=jr.RESTORING)
    fake = FakeQemu(journal, status_after_load="paused").install(monkeypatch)
    monkeypatch.setattr(restore, "launch", no_launch)
    monkeypatch.setattr(restore, "running_qemus", lambda: [qemu("web1", pid=99)])

    done = restore.restore_one(record, journal, keep_state=False, timeout=5)

    assert done["phase"] == jr.RESTORED and done["pid"] == 99 and done["adopted_from_interrupted_restore"]
    assert "cont" in fake.sent and "quit" not in fake.sent and fake.state_file_at_load is None
    assert not os.path.exists(record["state_file"]), "deleted only now that the VM is verified running"


def test_a_qemu_left_waiting_for_its_load_is_quit_and_the_vm_restored_afresh(journal, monkeypatch):
    record = saved(journal, "web1", phase=jr.RESTORING)
    fake = FakeQemu(journal).install(monkeypatch)
    fake.status = "inmigrate"
    quits = []
    monkeypatch.setattr(restore, "QmpSession", session_class(
        fake, quit=lambda session: quits.append(session.vm) or setattr(fake, "status", "paused"),
        wait_for=lambda session, predicate, timeout, interval=0.02, what="", wake_on_events=False: predicate(session),
        last_event_time=lambda session, name: RESUMED_AT if name == "RESUME" else None))
    monkeypatch.setattr(restore, "wait_gone", lambda pid, timeout: True)
    monkeypatch.setattr(restore, "running_qemus", lambda: [qemu("web1", pid=99)])

    done = restore.restore_one(record, journal, keep_state=False, timeout=5)

    assert quits == ["web1"] and fake.launched_argv is not None and fake.state_file_at_load == b"device state"
    assert done["pid"] == 777 and not done["adopted_from_interrupted_restore"]


def test_check_mode_verifies_every_state_file_and_changes_nothing(journal, host):
    saved(journal, "web1")
    result, restored = host(check_mode=True)
    assert restored == []
    assert actions(result) == {"web1": "would_restore"}
    assert journal.read("web1")["phase"] == jr.SAVED

    bad = saved(journal, "db1")
    with open(bad["state_file"], "wb") as handle:
        handle.write(b"other")
    with pytest.raises(RestoreError, match="does not match"):
        host(check_mode=True)


def test_one_failed_restore_does_not_stop_the_others_and_is_reported(journal, monkeypatch):
    saved(journal, "a")
    saved(journal, "b")
    saved(journal, "c")

    def restore_one(record, journal_, keep_state, timeout, restored_by="ansible"):
        if record["vm"] == "b":
            raise RestoreError("QEMU could not load the saved state: boom", vm="b")
        return journal_.set_phase(record, jr.RESTORED)
    monkeypatch.setattr(restore, "restore_one", restore_one)
    monkeypatch.setattr(restore, "running_qemus", list)

    with pytest.raises(RestoreError, match="1 of 3 VMs failed to restore") as failed:
        restore.restore_host(RestoreOptions(state_dir=journal.state_dir))

    assert [f["vm"] for f in failed.value.details["failures"]] == ["b"]
    assert failed.value.details["changed"] is True
    assert {vm["vm"] for vm in failed.value.details["vms"]} == {"a", "c"}
    assert journal.read("b")["phase"] == jr.SAVED
