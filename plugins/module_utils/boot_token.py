# Copyright: liveupdate.cpr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The proof that this boot is the kexec a rollout planned.

memmap= RAM survives a kexec and nothing else: after a crash, a power cycle
or an unplanned firmware reboot it holds garbage, and a guest resumed from it
is corrupted. So the stage mints a one-time token, kexec -l puts it on the
new kernel's command line, and vm_save arms it once every VM of the host is
saved. A boot proves it is the planned one only when its command line carries
the armed token, minted in an earlier boot and not used by another boot.
A firmware reboot carries no command line of ours, so it proves nothing.

The token is no secret (/proc/cmdline is world-readable); what it proves is
that root's state dir and this boot's command line agree.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Dict, Optional

from ansible_collections.liveupdate.cpr.plugins.module_utils import journal as jr
from ansible_collections.liveupdate.cpr.plugins.module_utils.errors import JournalError
from ansible_collections.liveupdate.cpr.plugins.module_utils.version import COLLECTION_VERSION

TOKEN_NAME = ".restore-token"
CMDLINE_KEY = "liveupdate_cpr.restore"


@dataclass
class BootProof:
    planned: bool
    reason: str
    restore_at_boot: bool = False
    consumed_by: Optional[str] = None


def token_path(state_dir: str) -> str:
    return os.path.join(os.path.abspath(state_dir), TOKEN_NAME)


def read_cmdline(path: str = "/proc/cmdline") -> str:
    with open(path) as handle:
        return handle.read()


def cmdline_token(cmdline: str) -> Optional[str]:
    """The last ``liveupdate_cpr.restore=`` value on a kernel command line, as the kernel itself would take it."""
    found = None
    for word in cmdline.split():
        key, _sep, value = word.partition("=")
        if key == CMDLINE_KEY:
            found = value
    return found


def read(state_dir: str) -> Optional[Dict[str, Any]]:
    data = jr.read_json(token_path(state_dir), "restore token", "remove it; the next rollout mints a new one.")
    return data if isinstance(data, dict) else None


def _write(state_dir: str, data: Dict[str, Any]) -> None:
    try:
        jr.write_json(token_path(state_dir), data)
    except OSError as exc:
        raise JournalError("cannot write restore token %s: %s." % (token_path(state_dir), exc.strerror or exc),
                           fix="free space in the state dir.") from exc


def mint(state_dir: str, restore_at_boot: bool, boot: Optional[str] = None) -> str:
    """A new, unarmed token for the next kexec; any older token is void from now on."""
    token = os.urandom(16).hex()  # not the secrets module: its imports cost the boot unit time under emulation
    _write(state_dir, {"token": token, "minted_boot_id": boot or jr.boot_id(), "minted_at": jr.now(),
                       "armed_at": None, "restore_at_boot": bool(restore_at_boot),
                       "collection_version": COLLECTION_VERSION, "consumed_boot_id": None, "consumed_by": None})
    return token


def arm(state_dir: str, boot: Optional[str] = None) -> bool:
    """Arm the token minted in this boot (every VM is saved now); False when there is none to arm."""
    data = read(state_dir)
    if data is None or data.get("minted_boot_id") != (boot or jr.boot_id()) or data.get("consumed_boot_id"):
        return False
    if not data.get("armed_at"):
        _write(state_dir, dict(data, armed_at=jr.now()))
    return True


def prove(state_dir: str, cmdline: Optional[str] = None, boot: Optional[str] = None) -> BootProof:
    """Whether this boot is the planned kexec, and why (or why not)."""
    boot = boot or jr.boot_id()
    carried = cmdline_token(read_cmdline() if cmdline is None else cmdline)
    if not carried:
        return BootProof(False, "this boot's command line carries no %s token, so it is not a kexec a rollout planned "
                                "(a crash, a power cycle, a firmware reboot or a manual kexec)" % CMDLINE_KEY)
    data = read(state_dir)
    if data is None:
        return BootProof(False, "this boot carries a %s token, but %s holds none" % (CMDLINE_KEY, state_dir))
    if data.get("token") != carried:
        return BootProof(False, "this boot's %s token is not the one %s holds: an older kexec's, or another "
                                "state dir's" % (CMDLINE_KEY, state_dir))
    if data.get("minted_boot_id") == boot:
        return BootProof(False, "the token was minted in this very boot; the planned kexec has not happened yet")
    if not data.get("armed_at"):
        return BootProof(False, "the token was never armed: not every VM was saved before the reboot")
    consumed = data.get("consumed_boot_id")
    if consumed and consumed != boot:
        return BootProof(False, "the token was already used, by boot %s; a later boot that reuses its command line "
                                "proves nothing" % consumed)
    return BootProof(True, "this boot carries the armed token minted before the kexec",
                     restore_at_boot=bool(data.get("restore_at_boot")), consumed_by=data.get("consumed_by"))


def consume(state_dir: str, by: str, boot: Optional[str] = None) -> None:
    """Bind the token to this boot: it proves this boot, and no later one."""
    data = read(state_dir)
    boot = boot or jr.boot_id()
    if data is not None and not data.get("consumed_boot_id"):
        _write(state_dir, dict(data, consumed_boot_id=boot, consumed_by=by, consumed_at=jr.now()))
