"""The boot unit's entry point, run on this machine as on the boot of a planned kexec (for tests and bench/).

This machine never reboots under its VMs, so a private mount namespace shows the entry point what such a boot
shows: /proc/cmdline carrying the armed restore token, and a boot id that is another boot's. Everything else is
real: the entry point that restore_unit installs into a host venv, the journal, the VMs' QEMUs.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict

import qemu.qmp


def host_venv(venv: Path) -> Path:
    """A venv like host_prepare's, its qemu.qmp borrowed from the venv running this (no index here)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    borrowed = Path(qemu.qmp.__file__).resolve().parents[2]
    (next(venv.glob("lib/python*/site-packages")) / "borrowed-qemu-qmp.pth").write_text(str(borrowed) + "\n")
    return venv


def allow_restore_at_boot(state_dir: Path) -> Dict[str, Any]:
    """systemd is not PID 1 here, so restore_unit mints a token that says the unit may not restore; turn it on, as
    a systemd host's stage mints it. Returns the token as it was minted."""
    token_file = state_dir / ".restore-token"  # boot_token.TOKEN_NAME
    minted: Dict[str, Any] = json.loads(token_file.read_text())
    token_file.write_text(json.dumps(dict(minted, restore_at_boot=True)))
    return minted


def run_entry_point(venv: Path, state_dir: Path, token: str, scratch: Path,
                    timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """``VENV/bin/liveupdate-cpr-restore --state-dir STATE_DIR`` on a "new boot" whose command line carries token."""
    cmdline, boot_id = scratch / "cmdline", scratch / "boot_id"
    cmdline.write_text("BOOT_IMAGE=/vmlinuz root=/dev/vda liveupdate_cpr.restore=%s\n" % token)
    boot_id.write_text("00000000-0000-4000-8000-%012x\n" % int(time.time()))
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
         'mount --bind "$1" /proc/cmdline && mount --bind "$2" /proc/sys/kernel/random/boot_id && shift 2 && exec "$@"',
         "sh", str(cmdline), str(boot_id), str(venv / "bin" / "liveupdate-cpr-restore"), "--state-dir", str(state_dir)],
        capture_output=True, text=True, timeout=timeout, check=False)
