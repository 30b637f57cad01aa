# Copyright: liveupdate.cpr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The QEMU guest agent, through the VM's agent channel, and the guest's clock after a resume.

A guest's clock stands still while its VM is stopped, so after a resume it is
behind by the blackout. NTP slews at most 500 ppm (about 23 hours for a 41 s
blackout), so the engine steps it with ``guest-set-time``, as libvirt's
``virsh domtime --sync`` does. Each step is bounded by AGENT_TIMEOUT.

The agent speaks QMP's JSON without a greeting or capabilities, one client at
a time; ``guest-sync-delimited`` (answered after a 0xFF byte) discards whatever
an earlier client left unread on the channel.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from ansible_collections.liveupdate.cpr.plugins.module_utils import qemu_argv
from ansible_collections.liveupdate.cpr.plugins.module_utils.errors import CprError

AGENT_TIMEOUT = 5.0
DELIMITER = b"\xff"
TIME_SYNC_POLICIES = ("auto", "required", "off")
# auto: only a VM with a vfio-pci device, which QEMU saves for cpr-reboot only with its guest suspended
SUSPEND_POLICIES = ("auto", "always", "never")
# A clock this close to the host's after guest-set-time counts as set; the measure itself is a round trip.
SYNCED_WITHIN_SECONDS = 1.0


class GuestAgentError(CprError):
    """The guest agent could not be reached, did not answer in time, or refused a command."""


class GuestAgent:
    """One connection to one VM's agent: ``with GuestAgent(path, vm) as agent: agent.execute(...)``."""

    def __init__(self, socket_path: str, vm: Optional[str], timeout: float = AGENT_TIMEOUT) -> None:
        self.socket_path = socket_path
        self.vm = vm
        self.timeout = timeout
        self._sock: Optional[socket.socket] = None
        self._buffer = b""

    def __enter__(self) -> GuestAgent:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(self.timeout)
        try:
            self._sock.connect(self.socket_path)
        except OSError as exc:
            self.close()
            raise GuestAgentError("cannot connect to its agent channel %s: %s." % (self.socket_path, exc.strerror),
                                  vm=self.vm) from exc
        self._sync()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def execute(self, command: str, arguments: Optional[Mapping[str, Any]] = None) -> Any:
        self._send(command, arguments)
        reply = self._read_reply()
        if "error" in reply:
            raise GuestAgentError("the guest agent refused %s: %s" % (command, reply["error"].get("desc")), vm=self.vm,
                                  qemu_message=reply["error"].get("desc"))
        return reply.get("return")

    def send_without_reply(self, command: str, arguments: Optional[Mapping[str, Any]] = None) -> None:
        """A command the agent answers only when it fails (guest-suspend-ram); see failure()."""
        self._send(command, arguments)
        self._socket().settimeout(0)

    def failure(self) -> Optional[str]:
        """The error the agent sent for a command sent without reply, if one has come by now."""
        try:
            self._receive()
        except GuestAgentError:
            return None  # nothing yet (or the channel closed as the guest went to sleep)
        if b"\n" not in self._buffer:
            return None
        reply = self._read_reply()
        return str(reply["error"].get("desc")) if "error" in reply else None

    def _sync(self) -> None:
        token = int.from_bytes(os.urandom(4), "big") >> 1
        # a 0xFF first resets the agent's parser, should an earlier client have left half a command
        self._send("guest-sync-delimited", {"id": token}, prefix=DELIMITER)
        self._buffer = b""
        while DELIMITER not in self._buffer:
            self._receive()
        self._buffer = self._buffer.split(DELIMITER)[-1]
        while self._read_reply().get("return") != token:
            pass  # an answer meant for an earlier client

    def _send(self, command: str, arguments: Optional[Mapping[str, Any]], prefix: bytes = b"") -> None:
        message: Dict[str, Any] = {"execute": command}
        if arguments is not None:
            message["arguments"] = dict(arguments)
        try:
            self._socket().sendall(prefix + json.dumps(message).encode() + b"\n")
        except OSError as exc:
            raise GuestAgentError("its agent channel %s failed: %s." % (self.socket_path, exc), vm=self.vm) from exc

    def _read_reply(self) -> Dict[str, Any]:
        while b"\n" not in self._buffer:
            self._receive()
        line, self._buffer = self._buffer.split(b"\n", 1)
        try:
            reply = json.loads(line.strip(DELIMITER).decode(errors="replace"))
        except ValueError as exc:
            raise GuestAgentError("the guest agent answered something that is not JSON: %r" % line[:80],
                                  vm=self.vm) from exc
        return reply if isinstance(reply, dict) else {}

    def _receive(self) -> None:
        try:
            chunk = self._socket().recv(65536)
        except BlockingIOError as exc:
            raise GuestAgentError("nothing from the guest agent yet.", vm=self.vm) from exc
        except socket.timeout as exc:
            raise GuestAgentError(
                "the guest agent did not answer on %s within %.0f s." % (self.socket_path, self.timeout), vm=self.vm,
                fix="check that qemu-guest-agent runs in the guest (systemctl status qemu-guest-agent), and that no "
                    "other client holds the channel (QEMU serves one at a time).") from exc
        except OSError as exc:
            raise GuestAgentError("its agent channel %s failed: %s." % (self.socket_path, exc), vm=self.vm) from exc
        if not chunk:
            raise GuestAgentError("QEMU closed the agent channel %s." % self.socket_path, vm=self.vm)
        self._buffer += chunk

    def _socket(self) -> socket.socket:
        if self._sock is None:
            raise GuestAgentError("the agent channel %s is not open." % self.socket_path, vm=self.vm)
        return self._sock


def agent_path(argv: Sequence[str]) -> Tuple[Optional[str], str]:
    """The agent channel's socket, or None and why the engine cannot reach an agent."""
    channel = qemu_argv.guest_agent_channel(argv)
    if channel is None:
        return None, "no virtserialport named %s" % qemu_argv.GUEST_AGENT_PORT
    return channel.path, channel.problem or ""


def clock_offset(agent: GuestAgent) -> float:
    """The guest's clock minus the host's, in seconds, read at the middle of the round trip."""
    asked = time.time_ns()
    guest = int(agent.execute("guest-get-time"))
    answered = time.time_ns()
    return round((guest - (asked + answered) / 2) / 1e9, 6)


@dataclass
class ClockSync:
    """What happened to one VM's clock after its resume."""

    policy: str
    synced: bool
    reason: Optional[str] = None          # why not, or what the agent said while it did set the clock
    agent: Optional[str] = None
    offset_before_seconds: Optional[float] = None
    offset_after_seconds: Optional[float] = None
    seconds: Optional[float] = None

    @property
    def failed_required(self) -> bool:
        return self.policy == "required" and not self.synced

    def as_dict(self) -> Dict[str, Any]:
        return asdict(self)


def sync_clock(argv: Sequence[str], vm: str, policy: str, timeout: float = AGENT_TIMEOUT) -> ClockSync:
    """Set a resumed guest's clock from the host's with guest-set-time, and measure its offset before and after."""
    if policy == "off":
        return ClockSync(policy, False, "not synced: guest_time_sync is off")
    path, unreachable = agent_path(argv)
    if path is None:
        return ClockSync(policy, False, "not synced: no agent (%s)" % unreachable)
    started = time.monotonic()
    result = ClockSync(policy, False, agent=path)
    try:
        with GuestAgent(path, vm, timeout) as agent:
            result.offset_before_seconds = clock_offset(agent)
            try:
                agent.execute("guest-set-time", {"time": time.time_ns()})
            except GuestAgentError as exc:
                # the agent sets the system clock before it runs hwclock, and says so only when hwclock fails
                result.reason = exc.message
            result.offset_after_seconds = clock_offset(agent)
    except GuestAgentError as exc:
        result.reason = "not synced: %s%s" % (exc.message, " To fix: %s" % exc.fix if exc.fix else "")
    result.seconds = round(time.monotonic() - started, 3)
    if result.offset_after_seconds is not None:
        result.synced = abs(result.offset_after_seconds) <= SYNCED_WITHIN_SECONDS
        if not result.synced:
            result.reason = "not synced: the guest's clock is still %.3f s off the host's%s" % (
                result.offset_after_seconds, " (%s)" % result.reason if result.reason else "")
    return result


def suspend_reason(argv: Sequence[str], policy: str) -> Optional[str]:
    """Why this VM's guest is suspended to RAM before its save, or None when it is not."""
    if policy == "always":
        return "guest_suspend is always"
    devices = qemu_argv.passthrough_devices(argv)
    if devices and policy == "auto":
        return "vfio-pci %s: QEMU saves a VFIO VM for cpr-reboot only with its guest suspended" % ", ".join(devices)
    return None


def suspend_refusals(argv: Sequence[str], vm: str, policy: str, why: Optional[str], wakeup_supported: bool
                     ) -> List[str]:
    """Why a VM cannot be saved for want of a suspend (``why``: suspend_reason's), checked before anything pauses."""
    devices = qemu_argv.passthrough_devices(argv)
    if devices and policy == "never":
        return ["it has vfio-pci %s and guest_suspend is never, but QEMU refuses cpr-reboot of a VFIO VM unless its "
                "guest is suspended" % ", ".join(devices)]
    if why is None:
        return []
    reasons = []
    if not wakeup_supported:
        reasons.append("its guest must be suspended for the save (%s), but its machine cannot wake it "
                       "(query-current-machine: wakeup-suspend-support is false)" % why)
    path, unreachable = agent_path(argv)
    if path is None:
        reasons.append("its guest must be suspended for the save (%s), but there is no agent to suspend it: %s" % (
            why, unreachable))
    else:
        try:
            with GuestAgent(path, vm) as agent:
                agent.execute("guest-ping")
        except GuestAgentError as exc:
            reasons.append("its guest must be suspended for the save (%s), but its agent: %s" % (why, exc.message))
    return reasons


SUSPEND_FIX = ("give %(vm)s an agent channel (-chardev socket,id=qga0,path=...,server=on,wait=off -device "
               "virtio-serial-pci -device virtserialport,chardev=qga0,name=org.qemu.guest_agent.0) with "
               "qemu-guest-agent running in the guest, and a machine that can wake it (on q35: -global "
               "ICH9-LPC.disable_s3=0); or leave %(vm)s out with vms")


def policy_of(vm: str, default: str, per_vm: Mapping[str, str]) -> str:
    return str(per_vm.get(vm, default))
