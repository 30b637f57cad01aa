"""vm_save's decisions before and after the migration: refuse the whole host first, and never lose a finished save."""

from __future__ import annotations

import os

import pytest
from engine_fakes import qemu as fake_qemu
from engine_fakes import session_class

from ansible_collections.liveupdate.cpr.plugins.module_utils import boot_token, save
from ansible_collections.liveupdate.cpr.plugins.module_utils import journal as jr
from ansible_collections.liveupdate.cpr.plugins.module_utils.errors import DiscoveryError, NotReadyError, SaveError
from ansible_collections.liveupdate.cpr.plugins.module_utils.qemu_argv import REDACTED, RamBackend
from ansible_collections.liveupdate.cpr.plugins.module_utils.ram_verdict import RamVerdict
from ansible_collections.liveupdate.cpr.plugins.module_utils.readiness import Readiness
from ansible_collections.liveupdate.cpr.plugins.module_utils.scope import Scope

GiB = 1 << 30


def qemu(name, ram=(), pid=4242):
    return fake_qemu(name, pid=pid, ram=ram, argv=["qemu-system-x86_64", "-name", "guest=%s" % name],
                     binary="/usr/bin/qemu-system-x86_64")


def ready(name, ram=(), mode="ignore-shared", reasons=(), fixes=()):
    verdict = RamVerdict("kexec", "fail", mode, True)
    return Readiness(qemu(name, ram), ready=not reasons, reasons=list(reasons), fixes=list(fixes), verdict=verdict)


def shared_ram(size, path="/dev/dax0.0", offset=0):
    return RamBackend("ram0", "memory-backend-file", size=size, mem_path=path, share=True, offset=offset)


@pytest.fixture
def journal(tmp_path):
    journal = jr.Journal(str(tmp_path / "state"))
    journal.ensure()
    return journal


def test_preflight_refuses_the_whole_host_naming_every_vm_and_reason(journal):
    vms = [ready("web1"), ready("db1", reasons=["supervised: systemd restarts it"], fixes=["run db1 outside"]),
           ready("mail", reasons=["QEMU blocks cpr-reboot: vfio", "run state is inmigrate; only ..."], fixes=["remove vfio"])]

    with pytest.raises(NotReadyError) as refused:
        save.preflight(vms, journal, check_mode=False)

    message = refused.value.message
    assert message.startswith("nothing was paused")
    assert "db1: supervised: systemd restarts it" in message
    assert "mail: QEMU blocks cpr-reboot: vfio; run state is inmigrate" in message
    assert "web1" not in message
    assert refused.value.vm == "db1"
    assert refused.value.details["not_ready"] == {"db1": ["supervised: systemd restarts it"],
                                                  "mail": ["QEMU blocks cpr-reboot: vfio", "run state is inmigrate; only ..."]}
    assert refused.value.fix == "run db1 outside; remove vfio"


def test_preflight_refuses_vms_whose_shared_ram_overlaps_even_if_each_is_ready(journal):
    vms = [ready("a", [shared_ram(GiB)]), ready("b", [shared_ram(GiB, offset=GiB // 2)])]

    with pytest.raises(NotReadyError, match="RAM ranges overlap") as refused:
        save.preflight(vms, journal, check_mode=False)

    assert "offset=" in refused.value.fix


def test_preflight_passes_disjoint_ranges_with_room_to_spare(journal, monkeypatch):
    monkeypatch.setattr(jr.Journal, "free_bytes", lambda self: 10 * GiB)
    save.preflight([ready("a", [shared_ram(GiB)]), ready("b", [shared_ram(GiB, offset=GiB)])], journal, check_mode=False)


def test_preflight_refuses_a_state_dir_without_room_for_the_state_files(journal, monkeypatch):
    vms = [ready("a", [RamBackend("ram0", "memory-backend-ram", size=GiB)], mode="save-ram")]
    needed = save.DEVICE_STATE_ALLOWANCE + GiB + save.FREE_SPACE_MARGIN
    monkeypatch.setattr(jr.Journal, "free_bytes", lambda self: needed - 1)

    with pytest.raises(NotReadyError, match="MiB free, the saves need about %d MiB" % (needed >> 20)):
        save.preflight(vms, journal, check_mode=False)

    monkeypatch.setattr(jr.Journal, "free_bytes", lambda self: needed)
    save.preflight(vms, journal, check_mode=False)


def test_preflight_in_check_mode_with_no_state_dir_yet_skips_the_space_check(tmp_path, monkeypatch):
    def no_statvfs(self):
        pytest.fail("free_bytes asked of a state dir that does not exist")
    monkeypatch.setattr(jr.Journal, "free_bytes", no_statvfs)
    save.preflight([ready("a", [shared_ram(GiB)])], jr.Journal(str(tmp_path / "absent")), check_mode=True)


def test_estimated_state_size_counts_ram_only_when_it_goes_into_the_file():
    ram = [shared_ram(2 * GiB), RamBackend("ram1", "memory-backend-ram", size=GiB), RamBackend("ram2", "memory-backend-ram")]

    assert save.estimated_state_size(ready("a", ram, mode="ignore-shared")) == save.DEVICE_STATE_ALLOWANCE
    assert save.estimated_state_size(ready("a", ram, mode="save-ram")) == save.DEVICE_STATE_ALLOWANCE + 3 * GiB
    unjudged = Readiness(qemu("a", ram))
    assert save.estimated_state_size(unjudged) == save.DEVICE_STATE_ALLOWANCE


def test_an_interrupted_save_that_hashed_its_file_is_a_save(journal):
    record = journal.set_phase({"vm": "web1", "state_complete": True, "state_sha256": "ab" * 32}, jr.SAVING)

    finished = save.finish_interrupted(record, journal)

    assert finished["phase"] == jr.SAVED
    assert journal.read("web1")["phase"] == jr.SAVED
    assert journal.read("web1")["state_sha256"] == "ab" * 32


def test_an_interrupted_save_with_an_incomplete_file_raises_and_keeps_the_record(journal):
    record = journal.set_phase({"vm": "web1"}, jr.SAVING)

    with pytest.raises(SaveError, match="state file is incomplete") as lost:
        save.finish_interrupted(record, journal)

    assert lost.value.vm == "web1"
    assert journal.record_path("web1") in lost.value.fix
    assert journal.read("web1")["phase"] == jr.SAVING


@pytest.mark.parametrize("phase", [jr.SAVED, jr.RESTORED, jr.SAVE_FAILED, jr.RESTORE_FAILED])
def test_finish_interrupted_leaves_records_of_other_phases_alone(journal, phase):
    record = journal.set_phase({"vm": "web1", "state_complete": True}, phase)
    assert save.finish_interrupted(record, journal) is None
    assert journal.read("web1")["phase"] == phase


def test_running_vms_whose_saves_await_restore_are_refused(journal):
    running = {"web1": qemu("web1"), "db1": qemu("db1"), "new": qemu("new")}
    records = {"web1": {"phase": jr.SAVED}, "db1": {"phase": jr.RESTORE_FAILED}, "old": {"phase": jr.SAVED},
               "new": {"phase": jr.RESTORED}}

    with pytest.raises(NotReadyError, match="web1, db1 run, but the journal holds their unrestored saves") as refused:
        save.check_running(running, records, journal)

    assert journal.state_dir in refused.value.fix
    save.check_running({"new": qemu("new")}, records, journal)


def test_a_running_vm_whose_name_cannot_name_a_state_file_is_refused(journal):
    with pytest.raises(DiscoveryError, match="cannot name a journal file"):
        save.check_running({"../etc/passwd": qemu("x")}, {}, journal)


def test_public_view_hides_the_environment_and_redacts_argv():
    record = {"vm": "web1", "phase": jr.SAVED, "environ": {"AWS_SECRET": "hunter2"},
              "argv": ["qemu", "-object", "secret,id=s0,data=hunter2"],
              "launch_argv": ["qemu", "-object", "secret,id=s0,data=hunter2", "-machine", "pc-q35-9.2"]}

    view = save.public_view(record, "saved")

    assert "environ" not in view
    assert "launch_argv" not in view
    assert "hunter2" not in repr(view)
    assert view["argv"][-2:] == ["-machine", "pc-q35-9.2"]
    assert REDACTED in view["argv"][2]
    assert view["action"] == "saved"
    assert view["vm"] == "web1"
    assert record["environ"] == {"AWS_SECRET": "hunter2"}  # the journal's own record is not touched


# -- save_one: the order of a save, and what a failed one leaves --------------------------------------------------
class FakeQemu:
    """QMP and the migration calls of one VM, without QEMU: save_to writes the state file as QEMU would."""

    def __init__(self, journal, migration_status="completed", status_after_migration="postmigrate"):
        self.journal = journal
        self.migration_status = migration_status
        self.status = "running"
        self.status_after_migration = status_after_migration
        self.sent = []
        self.phase_at_migrate = None

    def install(self, monkeypatch):
        fake = self

        session = session_class(fake, last_event_time=lambda _session, name: 100.0 if name == "STOP" else None,
                                quit=lambda _session: fake.sent.append("quit"))

        def save_to(session, state_file, timeout):
            fake.phase_at_migrate = fake.journal.read(session.vm)["phase"]
            with open(state_file, "wb") as handle:
                handle.write(b"device state")
            fake.status = fake.status_after_migration
            return {"status": fake.migration_status, "error-desc": "No space left on device"}

        monkeypatch.setattr(save, "QmpSession", session)
        monkeypatch.setattr(save.migration, "set_cpr_mode", lambda session, x_ignore_shared: fake.sent.append("cpr-mode"))
        monkeypatch.setattr(save.migration, "set_normal_mode", lambda session: fake.sent.append("normal-mode"))
        monkeypatch.setattr(save.migration, "save_to", save_to)
        monkeypatch.setattr(save, "wait_gone", lambda pid, timeout: True)
        return self


def assessed(name="web1"):
    found = ready(name)
    found.qemu_version, found.status, found.machine_type = "9.2.0", "running", "pc-q35-9.2"
    return found


def test_a_save_journals_saving_before_the_vm_pauses_and_hashes_the_file_before_quit(journal, monkeypatch):
    fake = FakeQemu(journal).install(monkeypatch)

    done = save.save_one(assessed(), journal, timeout=5, guest_time_sync="off")

    assert fake.phase_at_migrate == jr.SAVING
    assert journal.read("web1")["guest_time_sync"] == "off", "the boot unit's clock policy, kept for it"
    assert fake.sent.index("cpr-mode") < fake.sent.index("quit")
    assert done["phase"] == jr.SAVED
    on_disk = journal.read("web1")
    assert on_disk["phase"] == jr.SAVED
    assert on_disk["state_complete"] is True
    assert on_disk["state_sha256"] == jr.sha256_of(journal.state_path("web1"))
    assert on_disk["state_size"] == len(b"device state")
    assert on_disk["launch_argv"][1:3] == ["-machine", "pc-q35-9.2"]  # the machine type it ran, pinned


class SettlingQemu(FakeQemu):
    """QEMU 10.0's window: query-migrate says completed while query-status still says finish-migrate."""

    def __init__(self, journal, finish_migrate_looks):
        super().__init__(journal, status_after_migration="finish-migrate")
        self.finish_migrate_looks = finish_migrate_looks

    @property
    def status(self):
        if self._status == "finish-migrate" and self.finish_migrate_looks is not None:
            if self.finish_migrate_looks == 0:
                self._status = "postmigrate"
            self.finish_migrate_looks -= 1
        return self._status

    @status.setter
    def status(self, value):
        self._status = value


def test_a_save_waits_for_qemu_to_move_a_completed_migration_from_finish_migrate_to_postmigrate(journal, monkeypatch):
    fake = SettlingQemu(journal, finish_migrate_looks=3).install(monkeypatch)
    monkeypatch.setattr(save.migration, "RECHECK_SECONDS", 0)

    done = save.save_one(assessed(), journal, timeout=5)

    assert done["phase"] == jr.SAVED
    assert fake.sent.count("query-status") == 4
    assert "quit" in fake.sent


def test_a_vm_stuck_in_finish_migrate_is_a_failed_save_that_resumes_it(journal, monkeypatch):
    fake = SettlingQemu(journal, finish_migrate_looks=None).install(monkeypatch)
    monkeypatch.setattr(save.migration, "RECHECK_SECONDS", 0)
    monkeypatch.setattr(save.migration, "SETTLE_SECONDS", 0.05)

    with pytest.raises(SaveError, match="after the migration the VM is finish-migrate, not postmigrate"):
        save.save_one(assessed(), journal, timeout=5)

    assert "quit" not in fake.sent
    assert journal.read("web1")["phase"] == jr.SAVE_FAILED


def test_a_failed_migration_resumes_the_vm_and_sets_the_partial_file_aside(journal, monkeypatch):
    fake = FakeQemu(journal, migration_status="failed", status_after_migration="paused").install(monkeypatch)

    with pytest.raises(SaveError, match="left running: QEMU's migration ended failed: No space left") as failed:
        save.save_one(assessed(), journal, timeout=5)

    assert "cont" in fake.sent
    assert "normal-mode" in fake.sent
    assert "quit" not in fake.sent
    partial = journal.state_path("web1") + save.PARTIAL_SUFFIX
    assert failed.value.details["partial_state_file"] == partial
    assert os.path.exists(partial)
    assert not os.path.exists(journal.state_path("web1"))
    on_disk = journal.read("web1")
    assert on_disk["phase"] == jr.SAVE_FAILED
    assert on_disk["status_after_failure"] == "running"


def test_an_io_error_on_the_state_file_after_the_migration_still_resumes_the_vm(journal, monkeypatch):
    fake = FakeQemu(journal).install(monkeypatch)
    real_fsync = jr.fsync_path

    def fsync_path(path):
        if path.endswith(jr.STATE_SUFFIX):
            raise OSError(5, "Input/output error", path)
        real_fsync(path)
    monkeypatch.setattr(jr, "fsync_path", fsync_path)

    with pytest.raises(SaveError):
        save.save_one(assessed(), journal, timeout=5)

    assert fake.status == "running"
    assert journal.read("web1")["phase"] == jr.SAVE_FAILED


def test_an_interrupted_save_is_cancelled_resumed_and_its_file_set_aside(journal, monkeypatch):
    """Its task died mid-migration (a killed controller or module); the next save puts the VM back first."""
    fake = FakeQemu(journal).install(monkeypatch)
    fake.status = "finish-migrate"
    migrations = iter(["active", "cancelled"])
    real_execute = save.QmpSession.execute

    def execute(session, command, arguments=None, timeout=None):
        if command == "query-migrate":
            return {"status": next(migrations)}
        if command == "migrate_cancel":
            fake.status = "paused"
        return real_execute(session, command, arguments, timeout)
    monkeypatch.setattr(save.QmpSession, "execute", execute)
    monkeypatch.setattr(save.migration, "result", lambda session, timeout: {"status": "cancelled"})
    record = journal.set_phase(save.new_record(assessed(), journal, "auto"), jr.SAVING)
    with open(record["state_file"], "wb") as handle:
        handle.write(b"half a state")

    resumed = save.resume_interrupted(qemu("web1"), record, journal)

    assert fake.sent.index("migrate_cancel") < fake.sent.index("cont") and "quit" not in fake.sent
    assert resumed["phase"] == jr.SAVE_FAILED and resumed["status_after_failure"] == "running"
    assert "interrupted" in resumed["error"]
    with open(resumed["partial_state_file"], "rb") as partial:
        assert partial.read() == b"half a state"
    assert not os.path.exists(record["state_file"])


def test_a_failed_save_on_a_full_state_disk_makes_room_for_its_record_with_its_partial_file(journal, monkeypatch):
    fake = FakeQemu(journal, migration_status="failed", status_after_migration="paused").install(monkeypatch)
    real_write = jr.write_json
    full = {"left": 1}

    def write_json(path, data):
        if data.get("phase") == jr.SAVE_FAILED and full["left"]:
            full["left"] -= 1
            raise OSError(28, "No space left on device", path)
        real_write(path, data)
    monkeypatch.setattr(jr, "write_json", write_json)

    with pytest.raises(SaveError, match="left running"):
        save.save_one(assessed(), journal, timeout=5)

    assert fake.status == "running"
    on_disk = journal.read("web1")
    assert on_disk["phase"] == jr.SAVE_FAILED and on_disk["partial_state_file"] is None
    assert "full state disk" in on_disk["partial_state_file_removed"]
    assert not os.path.exists(journal.state_path("web1") + save.PARTIAL_SUFFIX)


# -- save_host: nothing is paused unless every VM may be ---------------------------------------------------------
def test_one_vm_that_is_not_ready_means_no_vm_is_saved(journal, monkeypatch):
    monkeypatch.setattr(save, "select", lambda qmp_dir, vms, records: Scope([qemu("web1"), qemu("db1", pid=2)]))
    monkeypatch.setattr(save, "assess_all", lambda vms, opts, check_outdated=False, records=None: [
        assessed("web1"), ready("db1", reasons=["supervised: restarts it"])])

    def no_save(*_args):
        pytest.fail("a VM was saved although another was not ready")
    monkeypatch.setattr(save, "save_one", no_save)

    with pytest.raises(NotReadyError, match="db1: supervised: restarts it"):
        save.save_host(save.SaveOptions(state_dir=journal.state_dir))


def test_saved_vms_that_are_down_are_reported_as_already_saved_and_not_saved_again(journal, monkeypatch):
    journal.set_phase({"vm": "old", "phase": jr.SAVED, "qmp": {"path": "/run/qmp/old.sock"}, "launch_argv": []}, jr.SAVED)
    monkeypatch.setattr(save, "select", lambda qmp_dir, vms, records: Scope([]))
    monkeypatch.setattr(save, "assess_all", lambda vms, opts, check_outdated=False, records=None: [])

    result = save.save_host(save.SaveOptions(state_dir=journal.state_dir))

    assert [(vm["vm"], vm["action"]) for vm in result["vms"]] == [("old", "already_saved")]
    assert result["changed"] is False
    elsewhere = save.save_host(save.SaveOptions(state_dir=journal.state_dir, qmp_dir="/run/other"))
    assert elsewhere["vms"] == []


def test_check_mode_plans_the_saves_and_writes_nothing(tmp_path, monkeypatch):
    state_dir = str(tmp_path / "state")
    monkeypatch.setattr(save, "select", lambda qmp_dir, vms, records: Scope([qemu("web1")]))
    monkeypatch.setattr(save, "assess_all", lambda vms, opts, check_outdated=False, records=None: [assessed("web1")])
    monkeypatch.setattr(save, "save_one", lambda *_args: pytest.fail("check mode saved a VM"))

    result = save.save_host(save.SaveOptions(state_dir=state_dir, check_mode=True))

    assert [(vm["name"], vm["action"], vm["mode"]) for vm in result["vms"]] == [("web1", "would_save", "ignore-shared")]
    assert result["changed"] is True
    assert not os.path.exists(state_dir)


def test_one_failed_save_does_not_hide_the_others_and_says_which_were_left_running(journal, monkeypatch):
    monkeypatch.setattr(save, "select", lambda qmp_dir, vms, records: Scope([qemu("a"), qemu("b", pid=2)]))
    monkeypatch.setattr(save, "assess_all", lambda vms, opts, check_outdated=False, records=None: [assessed("a"), assessed("b")])

    def save_one(found, journal_, timeout, guest_time_sync):
        if found.vm.name == "b":
            raise SaveError("save failed and the VM was left running: boom", vm="b")
        return journal_.set_phase({"vm": "a", "launch_argv": []}, jr.SAVED)
    monkeypatch.setattr(save, "save_one", save_one)

    with pytest.raises(SaveError, match="1 of 2 VMs failed to save; those were left running: b: ") as failed:
        save.save_host(save.SaveOptions(state_dir=journal.state_dir))

    assert failed.value.details["changed"] is True
    assert [(vm["vm"], vm["action"]) for vm in failed.value.details["vms"]] == [("a", "saved")]
    assert "do not reboot" in failed.value.fix


# -- the restore token is armed only once every VM of the host is saved -----------------------------------------
def test_the_restore_token_is_armed_once_no_qemu_runs_whatever_the_scope(journal, monkeypatch):
    """A host of two VMs, a and b, saved one named scope at a time: only the save that leaves no QEMU arms it."""
    def host():
        saved = {r["vm"] for r in journal.records() if r.get("phase") == jr.SAVED}
        return [qemu(name, pid=pid) for pid, name in enumerate("ab", 1) if name not in saved]
    monkeypatch.setattr(save, "running_qemus", host)
    monkeypatch.setattr(save, "select", lambda qmp_dir, vms, records: Scope(
        [vm for vm in host() if not vms or vm.name in vms]))
    monkeypatch.setattr(save, "assess_all",
                        lambda vms, opts, check_outdated=False, records=None: [assessed(vm.name) for vm in vms])
    monkeypatch.setattr(save, "save_one", lambda found, journal_, timeout, guest_time_sync: journal_.set_phase(
        {"vm": found.vm.name, "launch_argv": []}, jr.SAVED))
    boot_token.mint(journal.state_dir, True)

    only_a = save.save_host(save.SaveOptions(state_dir=journal.state_dir, vms=["a"]))
    assert only_a["restore_token_armed"] is False and not boot_token.read(journal.state_dir)["armed_at"], "b runs"

    # a scope that names the rest (liveupdate_vms) leaves the host with nothing running: armed
    the_rest = save.save_host(save.SaveOptions(state_dir=journal.state_dir, vms=["b"]))
    assert the_rest["restore_token_armed"] is True and boot_token.read(journal.state_dir)["armed_at"]


def test_a_failed_save_arms_nothing(journal, monkeypatch):
    monkeypatch.setattr(save, "select", lambda qmp_dir, vms, records: Scope([qemu("a")]))
    monkeypatch.setattr(save, "assess_all", lambda vms, opts, check_outdated=False, records=None: [assessed("a")])

    def fails(found, journal_, timeout, guest_time_sync):
        raise SaveError("boom", vm="a")
    monkeypatch.setattr(save, "save_one", fails)
    boot_token.mint(journal.state_dir, True)

    with pytest.raises(SaveError):
        save.save_host(save.SaveOptions(state_dir=journal.state_dir))
    assert not boot_token.read(journal.state_dir)["armed_at"]
