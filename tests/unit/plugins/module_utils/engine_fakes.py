"""Fakes the engine's unit tests share: a QEMU as discovery reports it, a QMP session that answers for a fake, and
a guest agent on a real unix socket."""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from typing import Any, Callable, Dict, Optional, Sequence

from ansible_collections.liveupdate.cpr.plugins.module_utils.discovery import QemuProcess, Supervisor
from ansible_collections.liveupdate.cpr.plugins.module_utils.qemu_argv import QmpEndpoint


def qemu(name: str = "web1", qmp: Optional[str] = "", pid: int = 4242, ram: Sequence[Any] = (),
         argv: Optional[Sequence[str]] = None, binary: str = "/usr/bin/qemu", deleted: bool = False,
         refusal: Optional[str] = None, secrets: Sequence[str] = ()) -> QemuProcess:
    """A running QEMU; qmp "" means /run/qmp/NAME.sock, None means no QMP monitor at all."""
    socket_path = "/run/qmp/%s.sock" % name if qmp == "" else qmp
    return QemuProcess(pid=pid, name=name, argv=list(argv or ["qemu"]), cwd="/", uid=0, gid=0, environ={},
                       binary=binary, binary_deleted=deleted,
                       qmp=QmpEndpoint(socket_path, "qmp") if socket_path else None,
                       qmp_problems=[] if socket_path else ["-monitor stdio is not QMP"], ram=list(ram),
                       supervisor=Supervisor(1, "systemd", "/", refusal=refusal), secrets=list(secrets))


def session_class(fake: Any, **methods: Callable[..., Any]) -> type:
    """A QmpSession stand-in bound to fake: each command goes to fake.sent; query-status and cont use fake.status.

    methods adds or replaces the session's methods (wait_for, last_event_time, quit, ...)."""

    def __init__(self: Any, path: str, vm: Optional[str] = None, **_kwargs: Any) -> None:
        self.vm = vm

    def execute(self: Any, command: str, arguments: Optional[Dict[str, Any]] = None, timeout: Any = None) -> Any:
        fake.sent.append(command)
        if command == "query-status":
            return {"status": fake.status}
        if command == "cont":
            fake.status = "running"
        if command == "query-version":
            return {"qemu": {"major": 10, "minor": 0, "micro": 2}, "package": ""}
        return {}

    body: Dict[str, Any] = {"__init__": __init__, "__enter__": lambda self: self, "__exit__": lambda self, *_exc: None,
                            "execute": execute}
    body.update(methods)
    return type("FakeQmpSession", (), body)


def agent_argv(path, server="server=on,wait=off", port="org.qemu.guest_agent.0"):
    return ["qemu", "-chardev", "socket,id=qga0,path=%s,%s" % (path, server), "-device", "virtio-serial-pci",
            "-device", "virtserialport,chardev=qga0,name=%s" % port]


class FakeAgent:
    """qemu-guest-agent's side of the channel: JSON lines, guest-sync-delimited answered after 0xFF.

    offset: how far the guest's clock is from the host's; guest-set-time sets it (set_error: and then fails,
    as the real agent does when hwclock is missing); stale: bytes an earlier client left unread; silent: answers
    nothing; programs: what guest-exec runs, argv[0] to (exit code, output, seconds it runs). It serves one client
    at a time, as QEMU does, for as many clients as come."""

    def __init__(self, tmp_path, offset=-30.0, silent=False, set_error=None, stale=b"", ignores_set=False,
                 programs=None, name="qga.sock"):
        self.path = str(tmp_path / name)
        self.offset, self.silent, self.set_error, self.stale, self.ignores_set = offset, silent, set_error, stale, ignores_set
        self.programs = programs or {}
        self.commands = []
        self.executed = []
        self._exec = {}
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(self.path)
        self.server.listen(1)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                connection = self.server.accept()[0]
            except OSError:
                return  # closed
            with connection, connection.makefile("rb") as reader:
                for raw in reader:
                    message = json.loads(raw.strip(b"\xff"))
                    self.commands.append(message["execute"])
                    if self.silent:
                        continue
                    try:
                        connection.sendall(self._answer(message))
                    except OSError:
                        break

    def _answer(self, message):
        command, arguments = message["execute"], message.get("arguments", {})
        if command == "guest-sync-delimited":
            return self.stale + b"\xff" + json.dumps({"return": arguments["id"]}).encode() + b"\n"
        if command == "guest-ping":
            return b'{"return": {}}\n'
        if command == "guest-get-time":
            return json.dumps({"return": int(time.time_ns() + self.offset * 1e9)}).encode() + b"\n"
        if command == "guest-set-time":
            if not self.ignores_set:
                self.offset = (arguments["time"] - time.time_ns()) / 1e9
            if self.set_error:
                return json.dumps({"error": {"class": "GenericError", "desc": self.set_error}}).encode() + b"\n"
            return b'{"return": {}}\n'
        if command == "guest-exec" and arguments["path"] in self.programs:
            pid = 1000 + len(self._exec)
            self.executed.append([arguments["path"]] + arguments.get("arg", []))
            self._exec[pid] = (time.monotonic(), self.programs[arguments["path"]])
            return json.dumps({"return": {"pid": pid}}).encode() + b"\n"
        if command == "guest-exec":
            return json.dumps({"error": {"class": "GenericError", "desc": "Guest agent command failed, error was "
                                         "'Failed to execute child process \u201c%s\u201d (No such file or directory)'"
                                         % arguments["path"]}}).encode() + b"\n"
        if command == "guest-exec-status":
            started, (code, output, seconds) = self._exec[arguments["pid"]]
            if time.monotonic() - started < seconds:
                return b'{"return": {"exited": false}}\n'
            return json.dumps({"return": {"exited": True, "exitcode": code, "out-data": base64.b64encode(
                output.encode()).decode()}}).encode() + b"\n"
        return json.dumps({"error": {"class": "CommandNotFound", "desc": "no " + command}}).encode() + b"\n"

    def close(self):
        self.server.close()
