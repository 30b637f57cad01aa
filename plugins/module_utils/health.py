# Copyright: liveupdate.cpr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Health gates: after a host's update, each of its VMs shows it is alive before the rollout goes on.

As kured and FleetLock gate each next node on the health of the last, a failed
gate fails its host, and the rolling play stops before the next batch. The
gates only look: every VM keeps running whatever they find.

Per VM, in this order:
  agent_ping     the guest agent answers ``guest-ping`` within agent_timeout;
  guest_command  an operator's argv runs in the guest (``guest-exec``) and exits 0;
  host_command   an operator's argv runs on the host, told which VM through its
                 environment, and exits 0.
"""

from __future__ import annotations

import base64
import os
import subprocess
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence

from ansible_collections.liveupdate.cpr.plugins.module_utils import guest_agent
from ansible_collections.liveupdate.cpr.plugins.module_utils import journal as jr
from ansible_collections.liveupdate.cpr.plugins.module_utils.concurrency import run_each
from ansible_collections.liveupdate.cpr.plugins.module_utils.discovery import QemuProcess
from ansible_collections.liveupdate.cpr.plugins.module_utils.errors import CprError, QmpError, carrying
from ansible_collections.liveupdate.cpr.plugins.module_utils.guest_agent import GuestAgent, GuestAgentError
from ansible_collections.liveupdate.cpr.plugins.module_utils.qmp import QmpSession
from ansible_collections.liveupdate.cpr.plugins.module_utils.readiness import run_status
from ansible_collections.liveupdate.cpr.plugins.module_utils.scope import select
from ansible_collections.liveupdate.cpr.plugins.module_utils.waiting import Deadline

AGENT_PING_POLICIES = ("auto", "required", "off")
PER_VM_KEYS = ("agent_ping", "guest_command", "host_command")
# run states whose guest cannot answer, by the operator's choice: gated only once it runs
NOT_RUNNING_BY_CHOICE = ("paused", "suspended")
OUTPUT_TAIL = 300
EXEC_POLL_SECONDS = 0.2


class HealthError(CprError):
    """A health gate failed; every VM was left running."""


@dataclass
class HealthOptions:
    qmp_dir: Optional[str] = None
    vms: Sequence[str] = ()
    state_dir: str = jr.DEFAULT_STATE_DIR
    timeout: float = 600.0
    check_mode: bool = False
    agent_ping: str = "auto"
    agent_timeout: float = 30.0
    guest_command: Sequence[str] = ()
    host_command: Sequence[str] = ()
    command_timeout: float = 120.0
    per_vm: Dict[str, Dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        problems = per_vm_problems(self.per_vm)
        if problems:
            raise HealthError("per_vm: %s." % "; ".join(problems),
                              fix="give each VM a mapping of any of %s, with commands as argv lists." % (
                                  ", ".join(PER_VM_KEYS)))

    def gates_for(self, vm: str) -> Dict[str, Any]:
        gates: Dict[str, Any] = {"agent_ping": self.agent_ping, "guest_command": list(self.guest_command),
                                 "host_command": list(self.host_command)}
        gates.update(self.per_vm.get(vm) or {})
        return gates


def per_vm_problems(per_vm: Mapping[str, Any]) -> List[str]:
    """What is wrong with a per_vm mapping, one sentence per VM, for the module boundary."""
    problems = []
    for vm, gates in sorted(per_vm.items()):
        if not isinstance(gates, Mapping):
            problems.append("%s: expected a mapping of %s, got %r" % (vm, ", ".join(PER_VM_KEYS), gates))
            continue
        unknown = sorted(set(gates) - set(PER_VM_KEYS))
        if unknown:
            problems.append("%s: unknown gate(s) %s; the gates are %s" % (vm, ", ".join(unknown), ", ".join(PER_VM_KEYS)))
        if "agent_ping" in gates and gates["agent_ping"] not in AGENT_PING_POLICIES:
            problems.append("%s: agent_ping=%s; it must be one of %s" % (
                vm, gates["agent_ping"], ", ".join(AGENT_PING_POLICIES)))
        for key in ("guest_command", "host_command"):
            command = gates.get(key, [])
            if not isinstance(command, list) or not all(isinstance(arg, str) for arg in command):
                problems.append("%s: %s must be a list of strings (an argv, never a shell string), got %r" % (
                    vm, key, command))
    return problems


@dataclass
class Gate:
    """One gate's outcome for one VM."""

    gate: str
    passed: bool
    detail: str
    seconds: float = 0.0
    skipped: bool = False

    def as_dict(self) -> Dict[str, Any]:
        return asdict(self)


def _tail(data: str) -> str:
    data = data.strip()
    return data if len(data) <= OUTPUT_TAIL else "..." + data[-OUTPUT_TAIL:]


def _command_text(argv: Sequence[str]) -> str:
    return " ".join(argv)


def ping_agent(path: Optional[str], unreachable: str, vm: str, policy: str, timeout: float) -> Gate:
    started = time.monotonic()
    if path is None:
        if policy == "required":
            return Gate("agent_ping", False, "no agent to ping: %s; agent_ping is required" % unreachable)
        return Gate("agent_ping", True, "skipped: no agent (%s)" % unreachable, skipped=True)
    deadline = Deadline(timeout)
    last = ""
    while True:
        try:
            with GuestAgent(path, vm, max(0.5, min(guest_agent.AGENT_TIMEOUT, deadline.remaining()))) as agent:
                agent.execute("guest-ping")
            return Gate("agent_ping", True, "answered guest-ping", round(time.monotonic() - started, 3))
        except GuestAgentError as exc:
            last = exc.message
        if deadline.passed():
            return Gate("agent_ping", False, "its agent did not answer guest-ping within %.0f s: %s" % (timeout, last),
                        round(time.monotonic() - started, 3))
        time.sleep(min(0.5, deadline.remaining()))


def run_in_guest(path: Optional[str], unreachable: str, vm: str, argv: Sequence[str], timeout: float) -> Gate:
    """guest-exec the operator's argv (the agent searches PATH) and wait, bounded, for it to exit 0."""
    started = time.monotonic()
    text = _command_text(argv)
    if path is None:
        return Gate("guest_command", False, "`%s` needs the guest agent, and there is none: %s" % (text, unreachable))
    deadline = Deadline(timeout)
    try:
        with GuestAgent(path, vm) as agent:
            pid = agent.execute("guest-exec", {"path": argv[0], "arg": list(argv[1:]), "capture-output": True})["pid"]
            while True:
                status = agent.execute("guest-exec-status", {"pid": pid})
                if status.get("exited"):
                    break
                if deadline.passed():
                    return Gate("guest_command", False, "`%s` still ran in the guest after %.0f s (guest pid %s)" % (
                        text, timeout, pid), round(time.monotonic() - started, 3))
                time.sleep(EXEC_POLL_SECONDS)
    except GuestAgentError as exc:
        return Gate("guest_command", False, "`%s` could not run in the guest: %s" % (text, exc.message),
                    round(time.monotonic() - started, 3))
    seconds = round(time.monotonic() - started, 3)
    output = _tail(" ".join(base64.b64decode(status.get(key, "")).decode(errors="replace")
                            for key in ("out-data", "err-data")))
    if "signal" in status:
        return Gate("guest_command", False, "`%s` was killed by signal %s in the guest%s" % (
            text, status["signal"], ": " + output if output else ""), seconds)
    code = status.get("exitcode")
    if code != 0:
        return Gate("guest_command", False, "`%s` exited %s in the guest%s" % (
            text, code, ": " + output if output else ""), seconds)
    return Gate("guest_command", True, "`%s` exited 0%s" % (text, ": " + output if output else ""), seconds)


def run_on_host(vm: QemuProcess, agent: Optional[str], argv: Sequence[str], timeout: float) -> Gate:
    """The operator's argv on the host, never through a shell; the VM is named in its environment."""
    started = time.monotonic()
    text = _command_text(argv)
    env = dict(os.environ, LIVEUPDATE_CPR_VM=vm.name, LIVEUPDATE_CPR_PID=str(vm.pid),
               LIVEUPDATE_CPR_QMP=vm.qmp.path if vm.qmp else "", LIVEUPDATE_CPR_AGENT=agent or "")
    try:
        done = subprocess.run(list(argv), env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout,
                              check=False)
    except subprocess.TimeoutExpired:
        return Gate("host_command", False, "`%s` still ran after %.0f s and was killed" % (text, timeout),
                    round(time.monotonic() - started, 3))
    except OSError as exc:
        return Gate("host_command", False, "`%s` could not run: %s" % (text, exc.strerror))
    seconds = round(time.monotonic() - started, 3)
    output = _tail((done.stdout + b" " + done.stderr).decode(errors="replace"))
    if done.returncode != 0:
        return Gate("host_command", False, "`%s` exited %d%s" % (text, done.returncode, ": " + output if output else ""),
                    seconds)
    return Gate("host_command", True, "`%s` exited 0%s" % (text, ": " + output if output else ""), seconds)


def _status(vm: QemuProcess) -> str:
    if vm.qmp is None:
        return "unknown"
    try:
        with QmpSession(vm.qmp.path, vm.name, connect_timeout=5) as session:
            return run_status(session)
    except QmpError:
        return "unknown"


def check_vm(vm: QemuProcess, opts: HealthOptions) -> Dict[str, Any]:
    gates = opts.gates_for(vm.name)
    command_timeout = min(float(opts.command_timeout), float(opts.timeout))
    status = _status(vm)
    results: List[Gate] = []
    if status in NOT_RUNNING_BY_CHOICE:
        results.append(Gate("status", True, "skipped: the VM is %s, so its guest cannot answer" % status, skipped=True))
        return _row(vm.name, status, results)
    path, unreachable = guest_agent.agent_path(vm.argv)
    if gates["agent_ping"] != "off":
        results.append(ping_agent(path, unreachable, vm.name, gates["agent_ping"],
                                  min(float(opts.agent_timeout), float(opts.timeout))))
    if gates["guest_command"]:
        if results and not results[-1].passed and not results[-1].skipped:
            results.append(Gate("guest_command", False, "not run: the agent did not answer", skipped=True))
        else:
            results.append(run_in_guest(path, unreachable, vm.name, gates["guest_command"], command_timeout))
    if gates["host_command"]:
        results.append(run_on_host(vm, path, gates["host_command"], command_timeout))
    return _row(vm.name, status, results)


def _row(vm: str, status: str, gates: Sequence[Gate]) -> Dict[str, Any]:
    verdict = {"passed": all(g.passed for g in gates), "gates": [g.as_dict() for g in gates]}
    return {"vm": vm, "status": status, "health": verdict}


def failed_gates(row: Mapping[str, Any]) -> List[str]:
    return ["%s (%s)" % (gate["gate"], gate["detail"]) for gate in row["health"]["gates"] if not gate["passed"]]


def check_host(opts: HealthOptions) -> Dict[str, Any]:
    journal = jr.Journal(opts.state_dir)
    records = {r["vm"]: r for r in journal.records()} if os.path.isdir(opts.state_dir) else {}
    scope = select(opts.qmp_dir, opts.vms, records)
    with carrying(scope.secrets):
        result = _check_scope(scope.running, opts, [name for name in opts.vms if name not in scope.by_name()])
    return dict(result, secrets=scope.secrets, warnings=scope.warnings)


def _check_scope(vms: Sequence[QemuProcess], opts: HealthOptions, down: Sequence[str]) -> Dict[str, Any]:
    if opts.check_mode:
        return {"changed": False, "vms": [{"vm": vm.name, "health": {"passed": None, "gates": [],
                                                                     "planned": opts.gates_for(vm.name)}} for vm in vms]}
    rows = [_row(name, "down", [Gate("status", False, "it does not run (its journal record says it is saved)")])
            for name in down]
    for vm, outcome in run_each(list(vms), lambda vm: check_vm(vm, opts)):
        rows.append(_row(vm.name, "unknown", [Gate("status", False, "the gates could not run: %s" % outcome)])
                    if isinstance(outcome, Exception) else outcome)
    rows.sort(key=lambda row: str(row["vm"]))
    failed = [row for row in rows if not row["health"]["passed"]]
    result = {"changed": False, "vms": rows, "failed_vms": [row["vm"] for row in failed]}
    if failed:
        raise HealthError(
            "health gates failed for %d of %d VMs, which keep running: %s." % (
                len(failed), len(rows), "; ".join("%s: %s" % (row["vm"], ", ".join(failed_gates(row)))
                                                  for row in failed)),
            vm=str(failed[0]["vm"]),
            fix="look into each guest named; once it is healthy, run the same command again: this host's update is "
                "done, so the rerun checks its gates again and goes on with the next batches (or set the VM's gates "
                "in per_vm, liveupdate_health_per_vm in the role).", **result)
    return result
