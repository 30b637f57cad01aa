"""Health gates after a host's update, against a fake agent on a real socket and real host commands.

The real agent in a real Debian guest, and a rollout stopped by a failing gate, are in
tests/integration/test_linux_guest.py."""

from __future__ import annotations

import json
import sys

import pytest
from engine_fakes import agent_argv, qemu

from ansible_collections.liveupdate.cpr.plugins.module_utils import health
from ansible_collections.liveupdate.cpr.plugins.module_utils.health import HealthError, HealthOptions, check_vm
from ansible_collections.liveupdate.cpr.plugins.module_utils.scope import Scope


@pytest.fixture(autouse=True)
def running(monkeypatch):
    """Every VM runs, as QMP's query-status would say; a case sets another state."""
    states = {}
    monkeypatch.setattr(health, "_status", lambda vm: states.get(vm.name, "running"))
    return states


def gates(row):
    return {gate["gate"]: gate for gate in row["health"]["gates"]}


def test_an_answering_agent_passes_the_ping(agent_factory):
    agent = agent_factory()

    row = check_vm(qemu("web1", argv=agent_argv(agent.path)), HealthOptions())

    assert row["health"]["passed"] and gates(row)["agent_ping"]["detail"] == "answered guest-ping"
    assert "guest-ping" in agent.commands


def test_without_an_agent_channel_auto_skips_the_ping_and_required_fails_it():
    vm = qemu("web1", argv=["qemu", "-m", "1G"])

    skipped = check_vm(vm, HealthOptions())
    required = check_vm(vm, HealthOptions(agent_ping="required"))

    assert skipped["health"]["passed"] and gates(skipped)["agent_ping"]["skipped"]
    assert "no virtserialport named org.qemu.guest_agent.0" in gates(skipped)["agent_ping"]["detail"]
    assert not required["health"]["passed"]
    assert "agent_ping is required" in gates(required)["agent_ping"]["detail"]


def test_an_agent_that_does_not_answer_fails_the_ping_within_its_timeout(agent_factory):
    agent = agent_factory(silent=True)

    row = check_vm(qemu("web1", argv=agent_argv(agent.path)), HealthOptions(agent_timeout=1))

    ping = gates(row)["agent_ping"]
    assert not row["health"]["passed"] and "did not answer guest-ping within 1 s" in ping["detail"]
    assert ping["seconds"] < 4


def test_a_guest_command_that_exits_0_passes_and_one_that_fails_names_its_exit_and_output(agent_factory):
    agent = agent_factory(programs={"systemctl": (0, "running\n", 0.3), "false": (3, "inactive\n", 0)})
    argv = agent_argv(agent.path)

    ok = check_vm(qemu("web1", argv=argv), HealthOptions(guest_command=["systemctl", "is-system-running", "--wait"]))
    bad = check_vm(qemu("web1", argv=argv), HealthOptions(guest_command=["false", "x"]))

    assert ok["health"]["passed"]
    assert gates(ok)["guest_command"]["detail"] == "`systemctl is-system-running --wait` exited 0: running"
    assert agent.executed[0] == ["systemctl", "is-system-running", "--wait"]
    assert not bad["health"]["passed"]
    assert gates(bad)["guest_command"]["detail"] == "`false x` exited 3 in the guest: inactive"


def test_a_guest_command_that_runs_too_long_or_cannot_start_fails(agent_factory):
    agent = agent_factory(programs={"sleep": (0, "", 30)})
    argv = agent_argv(agent.path)

    slow = check_vm(qemu("web1", argv=argv), HealthOptions(guest_command=["sleep", "30"], command_timeout=1))
    missing = check_vm(qemu("web1", argv=argv), HealthOptions(guest_command=["no-such-tool"]))

    assert "`sleep 30` still ran in the guest after 1 s" in gates(slow)["guest_command"]["detail"]
    assert "could not run in the guest" in gates(missing)["guest_command"]["detail"]
    assert "No such file or directory" in gates(missing)["guest_command"]["detail"]


def test_a_guest_command_is_not_run_when_the_agent_did_not_answer_and_needs_an_agent(agent_factory):
    silent = agent_factory(silent=True)

    unanswered = check_vm(qemu("web1", argv=agent_argv(silent.path)), HealthOptions(agent_timeout=1, guest_command=["true"]))
    no_agent = check_vm(qemu("web1", argv=["qemu"]), HealthOptions(agent_ping="off", guest_command=["true"]))

    assert gates(unanswered)["guest_command"]["detail"] == "not run: the agent did not answer"
    assert "needs the guest agent, and there is none" in gates(no_agent)["guest_command"]["detail"]
    assert not no_agent["health"]["passed"]


def test_the_host_command_runs_without_a_shell_and_is_told_which_vm(tmp_path):
    seen = tmp_path / "env.json"
    probe = ["import json, os, sys; json.dump({k: v for k, v in os.environ.items() if k.startswith('LIVEUPDATE_CPR_')}, "
             "open(sys.argv[1], 'w')); print('ok $HOME')", str(seen)]
    vm = qemu("db1", pid=777, argv=["qemu"])

    row = check_vm(vm, HealthOptions(agent_ping="off", host_command=[sys.executable, "-c"] + probe))

    assert row["health"]["passed"] and gates(row)["host_command"]["detail"].endswith("exited 0: ok $HOME")
    assert json.loads(seen.read_text()) == {"LIVEUPDATE_CPR_VM": "db1", "LIVEUPDATE_CPR_PID": "777",
                                            "LIVEUPDATE_CPR_QMP": "/run/qmp/db1.sock", "LIVEUPDATE_CPR_AGENT": ""}


@pytest.mark.parametrize("command, detail", [
    ([sys.executable, "-c", "print('degraded'); raise SystemExit(2)"], "exited 2: degraded"),
    (["/nonexistent/check"], "could not run: No such file or directory"),
    ([sys.executable, "-c", "import time; time.sleep(30)"], "still ran after 1 s and was killed"),
])
def test_a_failing_host_command_says_how_it_failed(command, detail):
    row = check_vm(qemu("db1", argv=["qemu"]), HealthOptions(agent_ping="off", host_command=command, command_timeout=1))

    assert not row["health"]["passed"] and detail in gates(row)["host_command"]["detail"]


def test_per_vm_gates_replace_the_hosts_for_that_vm():
    opts = HealthOptions(agent_ping="required", guest_command=["true"],
                         per_vm={"legacy1": {"agent_ping": "off", "guest_command": []}})

    assert opts.gates_for("legacy1") == {"agent_ping": "off", "guest_command": [], "host_command": []}
    assert opts.gates_for("web1")["agent_ping"] == "required"


@pytest.mark.parametrize("per_vm, problem", [
    ({"db1": "off"}, "db1: expected a mapping"),
    ({"db1": {"ping": "off"}}, "db1: unknown gate(s) ping"),
    ({"db1": {"agent_ping": "sometimes"}}, "db1: agent_ping=sometimes; it must be one of auto, required, off"),
    ({"db1": {"guest_command": "systemctl is-active db"}}, "db1: guest_command must be a list of strings"),
])
def test_a_wrong_per_vm_mapping_is_refused_with_the_vm_named(per_vm, problem):
    with pytest.raises(HealthError, match="per_vm: ") as refused:
        HealthOptions(per_vm=per_vm)
    assert problem in refused.value.message


def test_a_paused_vm_is_skipped_since_its_guest_cannot_answer(running):
    running["web1"] = "paused"

    row = check_vm(qemu("web1", argv=["qemu"]), HealthOptions(agent_ping="required", host_command=["false"]))

    assert row["health"]["passed"] and gates(row)["status"]["skipped"] and row["status"] == "paused"


def test_a_failed_gate_fails_the_host_names_the_vm_and_the_gate_and_keeps_every_row(monkeypatch, tmp_path, agent_factory):
    agent = agent_factory()
    vms = [qemu("web1", argv=agent_argv(agent.path)), qemu("db1", argv=["qemu"])]
    monkeypatch.setattr(health, "select", lambda qmp_dir, names, journal: Scope(list(vms)))
    opts = HealthOptions(state_dir=str(tmp_path), per_vm={"db1": {"host_command": ["false"]}})

    with pytest.raises(HealthError) as failed:
        health.check_host(opts)

    error = failed.value
    assert error.vm == "db1" and "health gates failed for 1 of 2 VMs, which keep running" in error.message
    assert "db1: host_command (`false` exited 1)" in error.message
    assert error.details["failed_vms"] == ["db1"]
    assert [row["vm"] for row in error.details["vms"]] == ["db1", "web1"]
    assert "run the same command again" in error.fix


def test_healthy_vms_pass_and_check_mode_runs_no_gate(monkeypatch, tmp_path):
    monkeypatch.setattr(health, "select", lambda qmp_dir, names, journal: Scope([qemu("web1", argv=["qemu"])]))

    passed = health.check_host(HealthOptions(state_dir=str(tmp_path), host_command=["true"]))
    planned = health.check_host(HealthOptions(state_dir=str(tmp_path), host_command=["false"], check_mode=True))

    assert passed["failed_vms"] == [] and passed["vms"][0]["health"]["passed"]
    assert planned["vms"][0]["health"]["planned"]["host_command"] == ["false"]


def test_a_named_vm_that_does_not_run_fails_its_gates(monkeypatch, tmp_path):
    monkeypatch.setattr(health, "select", lambda qmp_dir, names, journal: Scope([]))

    with pytest.raises(HealthError) as failed:
        health.check_host(HealthOptions(state_dir=str(tmp_path), vms=["web1"]))

    assert "web1: status (it does not run" in failed.value.message
