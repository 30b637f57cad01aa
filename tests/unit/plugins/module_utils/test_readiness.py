"""May a VM be saved? Every reason is listed, only queries are sent, and the migration mode is put back."""

from __future__ import annotations

import os
import sys

import pytest
from engine_fakes import qemu as fake_qemu

from ansible_collections.liveupdate.cpr.plugins.module_utils import probe, readiness
from ansible_collections.liveupdate.cpr.plugins.module_utils.errors import QmpError
from ansible_collections.liveupdate.cpr.plugins.module_utils.qemu_argv import RamBackend


def qemu(name="web1", qmp="/run/qmp/web1.sock", ram=(), refusal=None, pid=4242, binary="/usr/bin/qemu", deleted=False):
    return fake_qemu(name, qmp=qmp or None, ram=ram, refusal=refusal, pid=pid, binary=binary, deleted=deleted)


class FakeQemuMonitor:
    """The answers of one QEMU to the commands readiness sends; every command is recorded."""

    def __init__(self, version=(9, 2, 0), status="running", blockers=(), mode="normal", qom_type="pc-q35-9.2-machine",
                 fail=None):
        self.version, self.status, self.blockers, self.mode = version, status, list(blockers), mode
        self.qom_type, self.fail = qom_type, fail or {}
        self.sent = []
        self.opened = []

    def session_class(self):
        monitor = self

        class Session:
            def __init__(self, path, vm=None, **_kwargs):
                monitor.opened.append(path)
                self.vm, self.socket_path = vm, path

            def __enter__(self):
                if "connect" in monitor.fail:
                    raise QmpError(monitor.fail["connect"], self.vm, self.socket_path, fix="start QEMU with its QMP")
                return self

            def __exit__(self, *_exc):
                return None

            def execute(self, command, arguments=None, timeout=None):
                monitor.sent.append((command, arguments))
                if command in monitor.fail:
                    raise QmpError(monitor.fail[command], self.vm, self.socket_path)
                major, minor, micro = monitor.version
                answers = {
                    "query-version": {"qemu": {"major": major, "minor": minor, "micro": micro}},
                    "query-status": {"status": monitor.status},
                    "qom-get": monitor.qom_type,
                    "query-machines": [{"name": "pc-i440fx-9.2"}, {"name": "pc-q35-9.2", "is-default": True}],
                    "query-migrate-parameters": {"mode": monitor.mode},
                    "query-migrate": {"blocked-reasons": monitor.blockers} if monitor.blockers else {},
                }
                if command == "migrate-set-parameters":
                    monitor.mode = arguments["mode"]
                    return {}
                return answers[command]
        return Session

    def modes_set(self):
        return [args["mode"] for command, args in self.sent if command == "migrate-set-parameters"]

    def commands(self):
        return [command for command, _args in self.sent]


@pytest.fixture
def monitor(monkeypatch):
    def install(**answers):
        made = FakeQemuMonitor(**answers)
        monkeypatch.setattr(readiness, "QmpSession", made.session_class())
        return made
    return install


def assess(vm, policy="fail", check_outdated=False):
    return readiness.assess(vm, "kexec", policy, [], [], check_outdated)


def test_a_running_vm_on_a_new_qemu_without_blockers_is_ready_and_the_mode_is_put_back(monitor):
    qmp = monitor()

    result = assess(qemu())

    assert result.ready, result.reasons
    assert result.qemu_version == "9.2.0"
    assert result.status == "running"
    assert result.machine_type == "pc-q35-9.2"
    assert qmp.modes_set() == ["cpr-reboot", "normal"]
    assert qmp.mode == "normal"
    assert {"migrate", "stop", "cont", "quit"}.isdisjoint(qmp.commands())
    assert result.as_dict()["ram"]["mode"] == "ignore-shared"


def test_qemu_older_than_8_2_has_no_cpr_reboot_and_its_blockers_are_not_asked(monitor):
    qmp = monitor(version=(8, 1, 5))

    result = assess(qemu())

    assert not result.ready
    assert result.reasons == ["QEMU 8.1.5 has no cpr-reboot; it needs 8.2 or later"]
    assert qmp.modes_set() == []


def test_qemu_8_2_is_new_enough(monitor):
    qmp = monitor(version=(8, 2, 0))
    assert assess(qemu()).ready
    assert qmp.modes_set() == ["cpr-reboot", "normal"]


def test_blockers_are_qemus_own_words_and_the_mode_is_put_back(monitor):
    qmp = monitor(blockers=["vfio device 0000:01:00.0 does not support migration"])

    result = assess(qemu())

    assert not result.ready
    assert result.blockers == ["vfio device 0000:01:00.0 does not support migration"]
    assert result.reasons == ["QEMU blocks cpr-reboot: vfio device 0000:01:00.0 does not support migration"]
    assert "web1" in result.fixes[0]
    assert qmp.mode == "normal"


def test_a_vm_already_in_cpr_reboot_mode_is_left_in_it(monitor):
    qmp = monitor(mode="cpr-reboot")
    assess(qemu())
    assert qmp.modes_set() == ["cpr-reboot"]


def test_a_failed_blocker_query_still_puts_the_mode_back_and_is_a_reason(monitor):
    qmp = monitor(fail={"query-migrate": "QMP command query-migrate failed: EOF"})

    result = assess(qemu())

    assert not result.ready
    assert result.reasons == ["QMP command query-migrate failed: EOF"]
    assert qmp.modes_set() == ["cpr-reboot", "normal"]


@pytest.mark.parametrize("status", ["inmigrate", "postmigrate", "shutdown", "internal-error", "prelaunch"])
def test_only_running_or_paused_vms_may_be_saved(monitor, status):
    monitor(status=status)
    result = assess(qemu())
    assert not result.ready
    assert result.reasons == ["run state is %s; only a running or paused VM can be saved" % status]


@pytest.mark.parametrize("status", ["finish-migrate", "postmigrate"])
def test_the_states_an_interrupted_save_leaves_are_no_refusal_of_the_save_that_resumes_it(monitor, status):
    monitor(status=status)
    assert readiness.assess(qemu(), "kexec", "fail", [], [], interrupted_save=True).ready
    assert not assess(qemu()).ready, "without the journal's word, such a VM is no VM to save"


def test_a_paused_vm_may_be_saved(monitor):
    monitor(status="paused")
    assert assess(qemu()).ready


def test_a_supervised_vm_is_refused_and_every_other_reason_is_still_listed(monitor):
    monitor(version=(8, 0, 0))

    result = assess(qemu(refusal="systemd unit qemu@web1.service has Restart=always",
                         ram=[RamBackend("ram0", "memory-backend-ram", size=1 << 30)]))

    assert not result.ready
    assert result.reasons[0].startswith("supervised: systemd unit qemu@web1.service has Restart=always")
    assert any(reason.startswith("RAM would be lost: ram0 is anonymous RAM") for reason in result.reasons)
    assert "QEMU 8.0.0 has no cpr-reboot; it needs 8.2 or later" in result.reasons
    assert len(result.fixes) == 2


def test_anonymous_ram_is_fine_when_the_policy_saves_it(monitor):
    monitor()
    result = assess(qemu(ram=[RamBackend("ram0", "memory-backend-ram", size=1 << 30)]), policy="save_ram")
    assert result.ready
    assert not result.verdict.x_ignore_shared


def test_a_vm_without_a_unix_qmp_monitor_is_not_ready_and_is_not_connected_to(monitor):
    qmp = monitor()
    result = assess(qemu(qmp=None))
    assert result.reasons == ["no unix QMP monitor (-monitor stdio is not QMP)"]
    assert qmp.opened == []


def test_a_monitor_that_does_not_answer_is_a_reason_with_its_fix(monitor):
    monitor(fail={"connect": "QMP socket /run/qmp/web1.sock does not exist."})
    result = assess(qemu())
    assert not result.ready
    assert result.reasons == ["QMP socket /run/qmp/web1.sock does not exist."]
    assert result.fixes == ["start QEMU with its QMP"]


def test_the_machine_type_falls_back_to_the_default_machine_when_qom_cannot_tell(monitor):
    monitor(fail={"qom-get": "no such property"})
    assert assess(qemu()).machine_type == "pc-q35-9.2"


# -- outdated_reason --------------------------------------------------------------------------------------------
def this_process(**kwargs):
    """A 'QEMU' whose /proc/PID/exe is this very Python: same inode as its binary."""
    return qemu(pid=os.getpid(), binary=os.path.realpath(sys.executable), **kwargs)


def test_a_deleted_binary_is_outdated():
    assert "was deleted or replaced" in readiness.outdated_reason(qemu(deleted=True), "9.2.0")


def test_a_binary_no_longer_installed_is_outdated(tmp_path):
    assert "no longer installed" in readiness.outdated_reason(
        qemu(pid=os.getpid(), binary=str(tmp_path / "qemu")), "9.2.0")


def test_a_binary_replaced_by_another_file_is_outdated(tmp_path):
    other = tmp_path / "qemu"
    other.write_text("#!/bin/sh\n")
    assert "was replaced since it started" in readiness.outdated_reason(
        qemu(pid=os.getpid(), binary=str(other)), "9.2.0")


def test_the_same_binary_is_outdated_only_when_its_version_differs(monkeypatch):
    monkeypatch.setattr(readiness, "binary_version", lambda binary: "9.2.1")
    assert readiness.outdated_reason(this_process(), "9.2.1") is None
    assert readiness.outdated_reason(this_process(), "9.2.0") == "it runs QEMU 9.2.0, the installed binary is 9.2.1"
    monkeypatch.setattr(readiness, "binary_version", lambda binary: None)
    assert readiness.outdated_reason(this_process(), "9.2.0") is None


def took(monkeypatch, took=True, reason=None):
    probed = []

    def fake_probe(name, binary, argv, machine_type, cwd):
        probed.append((name, binary, machine_type))
        return probe.ProbeResult(binary, took, reason)
    monkeypatch.setattr(readiness.probe, "probe", fake_probe)
    return probed


def test_assess_asks_about_outdated_binaries_only_when_told(monitor, monkeypatch):
    monitor()
    probed = took(monkeypatch)
    vm = qemu(deleted=True)
    assert assess(vm).outdated is None and probed == []
    outdated = assess(vm, check_outdated=True)
    assert "was deleted or replaced" in outdated.outdated
    assert outdated.ready  # an outdated QEMU is what the update is for, not a reason to refuse
    assert probed == [("web1", "/usr/bin/qemu", outdated.machine_type)], "the binary its restore starts was probed"


def test_an_outdated_vm_the_installed_qemu_cannot_take_is_refused_before_anything_pauses(monitor, monkeypatch):
    monitor()
    took(monkeypatch, False, 'the installed QEMU /usr/bin/qemu refuses its configuration: unsupported machine type')
    refused = assess(qemu(deleted=True), check_outdated=True)
    assert not refused.ready
    assert any("unsupported machine type" in reason and "pinned" in reason for reason in refused.reasons), refused.reasons
    assert refused.as_dict()["probe"]["took"] is False
