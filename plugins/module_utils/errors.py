# Copyright: liveupdate.cpr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Typed errors of the engine.

Library code raises these; only the module boundary turns them into
``fail_json``. Every error says which host and VM it is about, what is wrong
and what the operator can do about it.
"""

from __future__ import annotations

import socket
from contextlib import contextmanager
from typing import Any, Dict, Iterator, Optional, Set


class CprError(Exception):
    """Base error: a message plus the facts an operator needs to act."""

    def __init__(self, message: str, vm: Optional[str] = None, fix: Optional[str] = None,
                 **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.vm = vm
        self.fix = fix
        self.host = socket.gethostname()
        self.details: Dict[str, Any] = details
        # never in as_dict: the boundary only hands them to Ansible to mask
        self.secrets: Set[str] = set()

    def __str__(self) -> str:
        where = "host %s" % self.host
        if self.vm:
            where += ", VM %s" % self.vm
        text = "%s: %s" % (where, self.message)
        if self.fix:
            text += " To fix: %s" % self.fix
        return text

    def as_dict(self) -> Dict[str, Any]:
        result: Dict[str, Any] = {"host": self.host, "vm": self.vm, "error": self.message,
                                  "fix": self.fix, "kind": type(self).__name__}
        result.update(self.details)
        return result


@contextmanager
def carrying(secrets: Set[str]) -> Iterator[None]:
    """A CprError raised inside takes ``secrets`` (as filled by then) to the boundary, which masks them."""
    try:
        yield
    except CprError as exc:
        exc.secrets.update(secrets)
        raise


class QmpError(CprError):
    """QMP failed: could not connect, timed out, or QEMU answered an error."""

    def __init__(self, message: str, vm: Optional[str], socket_path: str,
                 error_class: Optional[str] = None, qemu_message: Optional[str] = None,
                 fix: Optional[str] = None) -> None:
        super().__init__(message, vm=vm, fix=fix, socket=socket_path,
                         error_class=error_class, qemu_message=qemu_message)
        self.socket_path = socket_path
        self.error_class = error_class
        self.qemu_message = qemu_message


class DiscoveryError(CprError):
    """A QEMU process or its monitor could not be understood."""


class ScopeError(CprError):
    """The VMs asked for do not match what runs on the host."""


class NotReadyError(CprError):
    """A VM may not be paused: RAM would be lost, a blocker, a supervisor."""


class JournalError(CprError):
    """The state dir or a journal record cannot be used safely."""


class SaveError(CprError):
    """A save failed; the VM was left running."""


class RestoreError(CprError):
    """A restore failed; the state file and journal were kept."""
