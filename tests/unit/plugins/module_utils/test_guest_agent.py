"""The guest agent's channel, its protocol and the clock sync after a resume, against a fake agent on a real socket.

The real agent in a real Debian guest is in tests/integration/test_linux_guest.py."""

from __future__ import annotations

import json
import time

import pytest
from engine_fakes import agent_argv

from ansible_collections.liveupdate.cpr.plugins.module_utils import guest_agent, qemu_argv, restore, save
from ansible_collections.liveupdate.cpr.plugins.module_utils import journal as jr
from ansible_collections.liveupdate.cpr.plugins.module_utils.guest_agent import GuestAgent, GuestAgentError, sync_clock
from ansible_collections.liveupdate.cpr.plugins.module_utils.restore import check_required_clocks, set_guest_clock


# -- the channel, from argv ----------------------------------------------------------------------------------------
def test_the_agent_channel_is_the_server_socket_chardev_behind_the_named_virtserialport():
    assert qemu_argv.guest_agent_channel(agent_argv("/run/vm/qga.sock")) == qemu_argv.AgentChannel("/run/vm/qga.sock", None)


def test_libvirts_json_device_form_is_understood():
    argv = ["qemu", "-chardev", "socket,id=charchannel0,path=/var/lib/libvirt/qemu/ch.sock,server=on,wait=off",
            "-device", json.dumps({"driver": "virtserialport", "bus": "virtio-serial0.0", "nr": 1,
                                   "chardev": "charchannel0", "id": "channel0", "name": "org.qemu.guest_agent.0"})]
    assert qemu_argv.guest_agent_channel(argv).path == "/var/lib/libvirt/qemu/ch.sock"


@pytest.mark.parametrize("argv, problem", [
    (agent_argv("/run/qga.sock", server="server=off"), "connects out to /run/qga.sock"),
    (["qemu", "-chardev", "pty,id=qga0", "-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0"],
     "is a pty, not a unix socket"),
    (["qemu", "-chardev", "socket,id=qga0,fd=23,server=on", "-device",
      "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0"], "has no socket path"),
    (["qemu", "-device", "virtserialport,chardev=nope,name=org.qemu.guest_agent.0"], "names chardev 'nope'"),
])
def test_an_agent_channel_the_engine_cannot_open_says_why(argv, problem):
    channel = qemu_argv.guest_agent_channel(argv)
    assert channel.path is None and problem in channel.problem


def test_a_vm_without_the_agents_port_has_no_channel():
    assert qemu_argv.guest_agent_channel(agent_argv("/run/x.sock", port="com.example.other")) is None
    assert qemu_argv.guest_agent_channel(["qemu", "-m", "1G"]) is None


# -- against a fake agent on a real unix socket (engine_fakes.FakeAgent) ----------------------------------------------
def test_the_clock_is_set_from_the_hosts_and_the_offsets_before_and_after_are_reported(agent_factory):
    agent = agent_factory(offset=-41.5)

    clock = sync_clock(agent_argv(agent.path), "web1", "auto")

    assert clock.synced and clock.reason is None and clock.agent == agent.path
    assert clock.offset_before_seconds == pytest.approx(-41.5, abs=0.05)
    assert abs(clock.offset_after_seconds) < 0.05
    assert agent.commands == ["guest-sync-delimited", "guest-get-time", "guest-set-time", "guest-get-time"]


def test_what_an_earlier_client_left_on_the_channel_is_skipped(agent_factory):
    agent = agent_factory(stale=b'{"return": 12}\n{"return": {}')

    with GuestAgent(agent.path, "web1") as session:
        assert isinstance(session.execute("guest-get-time"), int)


def test_an_agent_that_sets_the_clock_but_then_fails_hwclock_counts_as_synced_with_its_words(agent_factory):
    agent = agent_factory(set_error="failed to set hardware clock: hwclock not found")

    clock = sync_clock(agent_argv(agent.path), "web1", "required")

    assert clock.synced and "hwclock not found" in clock.reason
    assert not clock.failed_required


def test_a_clock_the_agent_did_not_move_is_not_synced(agent_factory):
    agent = agent_factory(offset=-20.0, ignores_set=True)

    clock = sync_clock(agent_argv(agent.path), "web1", "required")

    assert not clock.synced and clock.failed_required
    assert "still -20.0" in clock.reason


def test_an_agent_that_never_answers_costs_one_bounded_wait(agent_factory):
    agent = agent_factory(silent=True)

    started = time.monotonic()
    clock = sync_clock(agent_argv(agent.path), "web1", "auto", timeout=0.3)

    assert time.monotonic() - started < 2
    assert not clock.synced
    assert clock.reason.startswith("not synced: the guest agent did not answer")


def test_auto_without_an_agent_reports_not_synced_no_agent_and_off_does_nothing(tmp_path):
    assert sync_clock(["qemu"], "web1", "auto").reason.startswith("not synced: no agent")
    assert not sync_clock(["qemu"], "web1", "auto").failed_required
    assert sync_clock(["qemu"], "web1", "required").failed_required
    off = sync_clock(agent_argv(str(tmp_path / "none.sock")), "web1", "off")
    assert not off.synced and "off" in off.reason and off.agent is None


def test_a_channel_nothing_listens_on_is_not_synced_and_says_where(tmp_path):
    clock = sync_clock(agent_argv(str(tmp_path / "gone.sock")), "web1", "auto")
    assert not clock.synced and "cannot connect to its agent channel %s" % (tmp_path / "gone.sock") in clock.reason


def test_required_clocks_that_were_not_set_fail_the_report_and_name_each_vm():
    records = [{"vm": "web1", "guest_clock": {"policy": "required", "synced": False, "reason": "not synced: no agent"}},
               {"vm": "db1", "guest_clock": {"policy": "auto", "synced": False, "reason": "not synced: no agent"}},
               {"vm": "app1", "guest_clock": {"policy": "required", "synced": True}}]

    with pytest.raises(GuestAgentError, match=r"1 VM\(s\) run again.*web1: not synced: no agent") as failed:
        check_required_clocks(records, [{"vm": "web1"}], changed=True)

    assert failed.value.details["changed"] is True
    check_required_clocks(records[1:], [], changed=False)


def test_restore_sets_the_clock_of_each_restored_vm_and_keeps_it_in_the_journal(tmp_path, monkeypatch):
    journal = jr.Journal(str(tmp_path / "state"))
    journal.ensure()
    record = journal.write({"vm": "web1", "phase": jr.RESTORED, "launch_argv": ["qemu"]})
    calls = []
    monkeypatch.setattr(guest_agent, "sync_clock", lambda argv, vm, policy: calls.append((vm, policy)) or
                        guest_agent.ClockSync(policy, False, "not synced: no agent"))
    updated = set_guest_clock(record, journal, "auto", {"web1": "off"})

    assert calls == [("web1", "off")]
    assert journal.read("web1")["guest_clock"]["reason"] == "not synced: no agent" == updated["guest_clock"]["reason"]


# -- suspend to RAM for passthrough guests ---------------------------------------------------------------------------
VFIO = ["-device", "vfio-pci,host=0000:3b:00.0,id=gpu0"]


def test_a_vfio_pci_device_is_found_in_keyval_and_json_form():
    assert qemu_argv.passthrough_devices(["qemu"] + VFIO) == ["0000:3b:00.0"]
    assert qemu_argv.passthrough_devices(["qemu", "-device", json.dumps({"driver": "vfio-pci", "host": "af:00.1"})]) == \
        ["af:00.1"]
    assert qemu_argv.passthrough_devices(["qemu", "-device", "virtio-net-pci"]) == []


def test_auto_suspends_only_vfio_vms_and_always_every_vm():
    assert "vfio-pci 0000:3b:00.0" in guest_agent.suspend_reason(["qemu"] + VFIO, "auto")
    assert guest_agent.suspend_reason(["qemu"], "auto") is None
    assert guest_agent.suspend_reason(["qemu"], "always") == "guest_suspend is always"
    assert guest_agent.suspend_reason(["qemu"] + VFIO, "never") is None


def refusals(argv, policy, wakeup_supported):
    """The preflight's refusals for one VM, as readiness asks them."""
    return guest_agent.suspend_refusals(argv, "gpu1", policy, guest_agent.suspend_reason(argv, policy), wakeup_supported)


def test_a_vfio_vm_without_an_agent_or_wakeup_is_refused_with_each_reason(tmp_path):
    reasons = refusals(["qemu"] + VFIO, "auto", wakeup_supported=False)
    assert len(reasons) == 2
    assert "cannot wake it (query-current-machine: wakeup-suspend-support is false)" in reasons[0]
    assert "no agent to suspend it: no virtserialport named org.qemu.guest_agent.0" in reasons[1]
    never = refusals(["qemu"] + VFIO, "never", wakeup_supported=True)
    assert never and "QEMU refuses cpr-reboot of a VFIO VM unless its guest is suspended" in never[0]
    silent = refusals(agent_argv(str(tmp_path / "gone.sock")) + VFIO, "auto", True)
    assert "but its agent: cannot connect" in silent[0]


def test_a_vfio_vm_with_an_answering_agent_and_wakeup_may_be_saved(agent_factory):
    agent = agent_factory()
    assert refusals(agent_argv(agent.path) + VFIO, "auto", wakeup_supported=True) == []
    assert "guest-ping" in agent.commands


def test_an_error_to_a_command_sent_without_reply_is_read_and_silence_is_none(agent_factory):
    agent = agent_factory()
    with GuestAgent(agent.path, "web1") as session:
        session.send_without_reply("guest-suspend-ram")
        deadline = time.monotonic() + 2
        failure = None
        while failure is None and time.monotonic() < deadline:
            failure = session.failure()
        assert failure == "no guest-suspend-ram"
        assert session.failure() is None


class WakingSession:
    """A QMP session of a suspended VM: system_wakeup makes it run."""

    def __init__(self, status="suspended"):
        self.status, self.sent = status, []

    def execute(self, command, arguments=None, timeout=None):
        self.sent.append(command)
        if command == "query-status":
            return {"status": self.status}
        if command == "system_wakeup":
            self.status = "running"
        return {}

    def last_event_time(self, name):
        return None  # no events here: the wake's end is the moment QEMU said it runs

    def wait_for(self, predicate, timeout, interval=0.02, what="", wake_on_events=False):
        value = predicate(self)
        assert value, "would wait for %s" % what
        return value


def test_a_guest_the_save_suspended_is_woken_when_its_save_fails():
    session = WakingSession()

    status = save._resume_after_failure(session, {"suspended_by_engine": True, "run_state_at_save": "running"})

    assert status == "running" and "system_wakeup" in session.sent
    assert session.sent.index("system_wakeup") < session.sent.index("migrate-set-parameters")


def test_the_restore_wakes_only_a_guest_the_save_suspended():
    session = WakingSession()
    took = restore._wake_if_suspended(session, {"suspended_by_engine": True})
    assert took is not None and 0 <= took < 5, "the wake's seconds, reported as wake_seconds"
    assert session.status == "running"
    untouched = WakingSession()
    assert restore._wake_if_suspended(untouched, {}) is None
    assert untouched.sent == []
