"""Fakes the engine's unit tests share: a QEMU as discovery reports it, and a QMP session that answers for a fake."""

from __future__ import annotations

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
        return {}

    body: Dict[str, Any] = {"__init__": __init__, "__enter__": lambda self: self, "__exit__": lambda self, *_exc: None,
                            "execute": execute}
    body.update(methods)
    return type("FakeQmpSession", (), body)
