"""vm_save's decisions before and after the migration: refuse the whole host first, and never lose a finished save."""

from __future__ import annotations

import pytest

from ansible_collections.liveupdate.cpr.plugins.module_utils import journal as jr
from ansible_collections.liveupdate.cpr.plugins.module_utils import save
from ansible_collections.liveupdate.cpr.plugins.module_utils.discovery import QemuProcess, Supervisor
from ansible_collections.liveupdate.cpr.plugins.module_utils.errors import DiscoveryError, NotReadyError, SaveError
from ansible_collections.liveupdate.cpr.plugins.module_utils.qemu_argv import REDACTED, QmpEndpoint, RamBackend
from ansible_collections.liveupdate.cpr.plugins.module_utils.ram_verdict import RamVerdict
from ansible_collections.liveupdate.cpr.plugins.module_utils.readiness import Readiness

GiB = 1 << 30


def qemu(name, ram=(), pid=4242):
    return QemuProcess(pid=pid, name=name, argv=["qemu-system-x86_64", "-name", "guest=%s" % name], cwd="/", uid=0, gid=0,
                       environ={}, binary="/usr/bin/qemu-system-x86_64", binary_deleted=False,
                       qmp=QmpEndpoint("/run/qmp/%s.sock" % name, "qmp"), qmp_problems=[], ram=list(ram),
                       supervisor=Supervisor(1, "systemd", "/"))


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
