# Copyright: liveupdate.cpr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A small synchronous facade over qemu.qmp.

Each session owns a private event loop, so several sessions can run in
threads side by side (one per VM during a concurrent save). Every wait is
bounded, and every failure becomes a QmpError naming the VM and the socket.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import time
import traceback
from typing import Any, Dict, List, Mapping, NoReturn, Optional, Tuple

from ansible_collections.liveupdate.cpr.plugins.module_utils.discovery import process_exists
from ansible_collections.liveupdate.cpr.plugins.module_utils.errors import QmpError
from ansible_collections.liveupdate.cpr.plugins.module_utils.journal import VMS_LOCK
from ansible_collections.liveupdate.cpr.plugins.module_utils.waiting import Deadline, wait_until

QMP_IMPORT_ERROR: Optional[str]
try:
    from qemu.qmp import ConnectError, EventListener, ExecuteError, QMPClient, QMPError
except ImportError:  # pragma: no cover - reported by the module boundary
    QMP_IMPORT_ERROR = traceback.format_exc()
else:
    QMP_IMPORT_ERROR = None

DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_COMMAND_TIMEOUT = 30.0
# Events kept for timing: QEMU stamps them itself, so the blackout we report
# is QEMU's own view of when the guest stopped and resumed.
TIMED_EVENTS = ("STOP", "RESUME", "MIGRATION", "SHUTDOWN", "SUSPEND", "WAKEUP")


def event_time(event: Mapping[str, Any]) -> float:
    stamp = event.get("timestamp", {})
    return float(stamp.get("seconds", 0)) + float(stamp.get("microseconds", 0)) / 1e6


def monitor_clients(path: str) -> List[Tuple[int, str]]:
    """Who is connected to a unix socket QEMU serves, other than us, from ``ss -x -p`` (iproute2): (pid, name).

    QEMU's end of each connection carries the socket's path; its peer inode is the client's end."""
    try:
        listing = subprocess.run(["ss", "-x", "-p", "-H"], capture_output=True, text=True, timeout=10,
                                 check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    rows = [line.split() for line in listing.splitlines()]
    peers = {row[7] for row in rows if len(row) >= 8 and row[1] == "ESTAB" and row[4] == path}
    found = []
    for row in rows:
        if len(row) >= 9 and row[5] in peers and row[4] != path:
            for name, pid in re.findall(r'\("([^"]+)",pid=(\d+)', " ".join(row[8:])):
                if int(pid) != os.getpid():
                    found.append((int(pid), name))
    return sorted(set(found))


def vms_lock_open_in(pid: int) -> Optional[str]:
    """The path of a host's VM lock (STATE_DIR/.vms.lock) that pid has open, if any: then pid is a save, a restore
    or the boot unit of this collection, which holds the VM's monitor while it moves the VM's state."""
    try:
        fds = os.listdir("/proc/%d/fd" % pid)
    except OSError:
        return None
    for fd in fds:
        try:
            target = os.readlink("/proc/%d/fd/%s" % (pid, fd))
        except OSError:
            continue  # closed meanwhile
        if os.path.basename(target) == VMS_LOCK:
            return target
    return None


class QmpSession:
    """One QMP connection to one VM: ``with QmpSession(path, vm) as qmp: ...``."""

    def __init__(self, socket_path: str, vm: Optional[str] = None,
                 connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
                 command_timeout: float = DEFAULT_COMMAND_TIMEOUT, server_pid: Optional[int] = None) -> None:
        self.socket_path = socket_path
        self.vm = vm
        self.connect_timeout = connect_timeout
        # the QEMU that is to serve the socket, when known (one the restore just started): once it has exited, a
        # refused connection is final, however long connect_timeout gives a slow QEMU to greet
        self.server_pid = server_pid
        self.command_timeout = command_timeout
        self.events: List[Dict[str, Any]] = []
        self._loop = asyncio.new_event_loop()
        self._client: Any = None
        self._listener: Any = None

    # -- connection -------------------------------------------------------
    def connect(self) -> QmpSession:
        if not os.path.exists(self.socket_path):
            raise QmpError("QMP socket %s does not exist." % self.socket_path, self.vm,
                           self.socket_path,
                           fix="check the VM's -qmp/-chardev path and that its QEMU still runs.")
        deadline = Deadline(self.connect_timeout)
        refused: List[Exception] = []

        def attempt() -> bool:
            self._client = QMPClient(self.vm or "liveupdate-cpr")
            self._listener = EventListener(TIMED_EVENTS)
            self._client.register_listener(self._listener)
            try:
                self._run(self._client.connect(self.socket_path), max(0.5, deadline.remaining()))
                return True
            except ConnectError as exc:
                # QEMU serves one monitor client at a time and refuses others
                # until it has noticed the previous one leave: try again.
                if isinstance(exc.exc, ConnectionRefusedError):
                    self._client = None
                    refused.append(exc)
                    if self.server_pid is not None and not process_exists(self.server_pid):
                        self.close()
                        raise QmpError("QEMU (pid %d) exited before it greeted on its QMP socket %s." % (
                            self.server_pid, self.socket_path), self.vm, self.socket_path,
                            fix="see what QEMU said as it exited.") from exc
                    return False
                self._connect_failed(exc)
            except (QmpError, OSError, QMPError) as exc:
                self._connect_failed(exc)

        if not wait_until(attempt, deadline, 0.02):
            self._connect_failed(refused[-1])
        return self

    def _connect_failed(self, exc: Exception) -> NoReturn:
        self.close()
        if isinstance(exc, QmpError):  # our timeout: something listens but never greets as QMP
            holders = monitor_clients(self.socket_path)
            ours = [(pid, lock) for pid, lock in ((pid, vms_lock_open_in(pid)) for pid, _name in holders) if lock]
            if ours:
                pid, lock = ours[0]
                raise QmpError(
                    "%s is held by pid %d, a save or restore of this collection (it has %s open), perhaps one a "
                    "killed controller left running." % (self.socket_path, pid, lock), self.vm, self.socket_path,
                    fix="wait for pid %d to finish (do not stop it: it is moving the VM's state; `fuser -v %s` shows "
                        "it while it runs), then run again." % (pid, lock)) from exc
            held = "; it is held by %s" % ", ".join("%s (pid %d)" % (name, pid) for pid, name in holders) \
                if holders else ""
            raise QmpError(
                "%s accepted the connection but sent no QMP greeting within %.0f s: another client may hold the "
                "monitor (QEMU serves one client per monitor socket), or it is not a QMP socket%s." % (
                    self.socket_path, self.connect_timeout, held), self.vm, self.socket_path,
                fix="%s; if no client holds it, point at the VM's QMP socket (mode=control), not at a console or HMP "
                    "socket." % ("stop %s, or give the VM a second -qmp socket for it" % ", ".join(
                        "pid %d" % pid for pid, _name in holders) if holders else
                        "find the client that holds it with `ss -x -p | grep %s` and stop it" % self.socket_path)
            ) from exc
        if isinstance(exc, ConnectError) and isinstance(exc.exc, OSError):
            raise QmpError("cannot connect to QMP socket %s: %s." % (self.socket_path, exc.exc.strerror or exc.exc),
                           self.vm, self.socket_path,
                           fix="check that the VM's QEMU runs and that no other client holds its monitor.") from exc
        raise QmpError("%s answers, but the QMP handshake failed: %s." % (self.socket_path, exc),
                       self.vm, self.socket_path,
                       fix="point at the VM's QMP socket (mode=control), not at a console or HMP socket.") from exc

    def close(self) -> None:
        if self._client is not None:
            try:
                self._loop.run_until_complete(asyncio.wait_for(self._client.disconnect(), 5))
            except (EOFError, OSError, QMPError, asyncio.TimeoutError):
                # After `quit` QEMU closes the socket first; qemu.qmp may then
                # raise EOFError from disconnect. That is the expected end.
                pass
            self._client = None
        if not self._loop.is_closed():
            self._loop.close()

    def __enter__(self) -> QmpSession:
        return self.connect()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- commands ---------------------------------------------------------
    def execute(self, command: str, arguments: Optional[Mapping[str, object]] = None,
                timeout: Optional[float] = None) -> Any:
        if self._client is None:
            raise QmpError("QMP session is not connected.", self.vm, self.socket_path)
        try:
            return self._run(self._client.execute(command, arguments),
                             timeout if timeout is not None else self.command_timeout)
        except ExecuteError as exc:
            raise QmpError("QEMU refused %s: %s" % (command, exc), self.vm, self.socket_path,
                           error_class=exc.error_class, qemu_message=str(exc)) from exc
        except (EOFError, OSError, QMPError) as exc:
            raise QmpError("QMP command %s failed: %s" % (command, exc or type(exc).__name__),
                           self.vm, self.socket_path) from exc

    def quit(self) -> None:
        """Send `quit`; the connection drops as QEMU exits, which is fine."""
        try:
            self.execute("quit", timeout=10)
        except QmpError as exc:
            if exc.error_class is not None:
                raise

    def drain_events(self) -> List[Dict[str, Any]]:
        if self._listener is not None:
            for message in self._listener.clear():
                self.events.append(dict(message))
        return self.events

    def last_event_time(self, name: str) -> Optional[float]:
        for event in reversed(self.drain_events()):
            if event.get("event") == name:
                return event_time(event)
        return None

    def next_event(self, timeout: float) -> None:
        """Wait up to ``timeout`` s for QEMU's next event (kept, like drained ones): a pause that an event cuts short."""
        if self._listener is None:
            time.sleep(timeout)
            return
        try:
            event = self._loop.run_until_complete(asyncio.wait_for(self._listener.get(), timeout))
        except asyncio.TimeoutError:
            return
        self.events.append(dict(event))

    def wait_for(self, predicate: Any, timeout: float, interval: float = 0.02,
                 what: str = "condition", wake_on_events: bool = False) -> Any:
        """Poll ``predicate(self)`` until it returns a truthy value; with ``wake_on_events``
        a QEMU event ends the pause between polls early."""
        value = wait_until(lambda: predicate(self), timeout, interval,
                           pause=self.next_event if wake_on_events else time.sleep)
        if not value:
            raise QmpError("timed out after %.0f s waiting for %s." % (timeout, what),
                           self.vm, self.socket_path)
        return value

    def _run(self, coroutine: Any, timeout: float) -> Any:
        try:
            return self._loop.run_until_complete(asyncio.wait_for(coroutine, timeout))
        except asyncio.TimeoutError as exc:
            raise QmpError("no answer on %s within %.0f s." % (self.socket_path, timeout),
                           self.vm, self.socket_path) from exc
