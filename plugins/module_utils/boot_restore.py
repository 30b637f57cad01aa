# Copyright: liveupdate.cpr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Restore at boot: the guests resume in the new kernel's early userspace, not when Ansible reconnects.

Two front doors onto one engine (restore.restore_host):
- ``vm_restore``, run by the rollout once the host answers SSH;
- the entry point ``liveupdate-cpr-restore``, run by ``liveupdate-cpr-restore.service``
  early in the boot. It is this file's ``main``, installed with the rest of the
  collection's module_utils into the host's venv by the ``restore_unit`` module,
  from the very payload Ansible shipped: the code that runs at boot is the
  code of the collection that saved the VMs.

The unit acts only on the boot a rollout planned (boot_token), only on saves
of its own collection version, and only once each VM's host resources exist;
anything it cannot or may not restore stays saved, for the rollout's restore.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ansible_collections.liveupdate.cpr.plugins.module_utils import boot_token, qemu_argv
from ansible_collections.liveupdate.cpr.plugins.module_utils import journal as jr
from ansible_collections.liveupdate.cpr.plugins.module_utils.discovery import systemd_is_init
from ansible_collections.liveupdate.cpr.plugins.module_utils.errors import CprError, JournalError, RestoreError
from ansible_collections.liveupdate.cpr.plugins.module_utils.restore import RESTORED_BY_BOOT_UNIT, RestoreOptions, restore_host
from ansible_collections.liveupdate.cpr.plugins.module_utils.version import COLLECTION_VERSION
from ansible_collections.liveupdate.cpr.plugins.module_utils.waiting import Deadline, wait_until

UNIT_NAME = "liveupdate-cpr-restore.service"
ENTRY_POINT = "liveupdate-cpr-restore"
DEFAULT_VENV = "/opt/liveupdate-cpr/venv"
DEFAULT_UNIT_DIR = "/etc/systemd/system"
PACKAGE = "ansible_collections/liveupdate/cpr/plugins/module_utils"
# Written into a unit file and a script: no quoting games, so only plain absolute paths.
PLAIN_PATH = re.compile(r"^/[A-Za-z0-9_.+/-]+$")

Log = Callable[[str], None]


# -- at boot ----------------------------------------------------------------
def resources_of(record: Dict[str, Any]) -> List[Tuple[str, str]]:
    """What this VM's QEMU needs on the host before it can start: its binary, RAM backing, images, sockets, bridges."""
    found = [("path", str(record["binary"]))]
    found += [("path", str(b["mem_path"])) for b in record.get("ram_backends", []) if b.get("mem_path")]
    found += qemu_argv.host_resources(record.get("launch_argv", []), record.get("cwd") or "/")
    return list(dict.fromkeys(found))


def is_present(resource: Tuple[str, str]) -> bool:
    kind, name = resource
    return os.path.exists("/sys/class/net/%s" % name) if kind == "interface" else os.path.exists(name)


class ResourcesMissing(RestoreError):
    """A VM's host resources did not appear within the bound: it stays saved, for the rollout's restore."""


def resource_wait(journal: jr.Journal, timeout: float, log: Log) -> Callable[[Dict[str, Any]], None]:
    """Each VM's wait for its own resources, run in its own restore thread: one VM never waits for another's bridge.
    All waits share one bound, counted from now."""
    deadline = Deadline(timeout)

    def wait_for_own(record: Dict[str, Any]) -> None:
        needed = resources_of(record)
        started = jr.now()
        wait_until(lambda: all(is_present(r) for r in needed), deadline, 0.05)
        missing = ["%s %s" % r for r in needed if not is_present(r)]
        waited = jr.now() - started
        if missing:
            why = "after %g s these are still missing: %s. The rollout's restore tries again" % (
                timeout, ", ".join(missing))
            _leave(journal, record, log, why)
            raise ResourcesMissing(why, vm=record["vm"])
        if waited >= 0.1:
            log("%s: waited %.3f s for its host resources" % (record["vm"], waited))
    return wait_for_own


def write_line(line: str) -> None:
    """The unit's log: stdout, which journald keeps, a line at a time."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def restore_at_boot(state_dir: str, resource_timeout: float, restore_timeout: float, log: Log = write_line) -> int:
    """The unit's work: restore what this boot may restore; 0 when nothing failed, 1 when a VM failed."""
    log("liveupdate.cpr %s restore at boot, state dir %s" % (COLLECTION_VERSION, state_dir))
    journal = jr.Journal(state_dir)
    saved = [r for r in journal.records() if r.get("phase") == jr.SAVED]
    names = ", ".join(r["vm"] for r in saved) or "none"
    proof = boot_token.prove(state_dir)
    if not proof.planned:
        log("restoring nothing: %s. Saved VMs (%s) stay saved; the rollout's restore decides, by each VM's RAM "
            "verdict." % (proof.reason, names))
        return 0
    boot_token.consume(state_dir, RESTORED_BY_BOOT_UNIT)
    if not proof.restore_at_boot:
        log("restoring nothing: the rollout turned restore at boot off (liveupdate_restore_at_boot). Saved VMs (%s) "
            "wait for its restore." % names)
        return 0
    mine = []
    for record in saved:
        if record.get("collection_version") == COLLECTION_VERSION:
            mine.append(record)
        else:
            _leave(journal, record, log, "it was saved by liveupdate.cpr %s and this entry point is %s; it restores "
                   "only its own version's saves. The rollout's restore brings it back" % (
                       record.get("collection_version") or "before 0.1.0", COLLECTION_VERSION))
    if not mine:
        log("restoring nothing: no saved VM here is this entry point's to restore.")
        return 0
    try:
        result = restore_host(RestoreOptions(vms=[r["vm"] for r in mine], state_dir=state_dir, timeout=restore_timeout,
                                             restored_by=RESTORED_BY_BOOT_UNIT,
                                             before_launch=resource_wait(journal, resource_timeout, log),
                                             # the rollout's clock policy for each VM, as its save recorded it
                                             guest_time_sync_per_vm={r["vm"]: r["guest_time_sync"] for r in mine
                                                                     if r.get("guest_time_sync")}))
    except CprError as exc:
        masked = _masking(log, sorted(exc.secrets))
        failed = [f for f in exc.details.get("failures") or [exc.as_dict()] if f.get("kind") != ResourcesMissing.__name__]
        for failure in failed:
            masked("%s: NOT restored: %s %s" % (failure.get("vm"), failure.get("error"), failure.get("fix") or ""))
        for vm in exc.details.get("vms") or []:
            _log_restored(vm, masked)
        return 1 if failed else 0
    for vm in result["vms"]:
        _log_restored(vm, log)
    return 0


def _masking(log: Log, secrets: Sequence[str]) -> Log:
    """``log`` that never writes a secret of a QEMU command line (QEMU's own messages may quote them)."""
    def masked(line: str) -> None:
        for secret in sorted(secrets, key=len, reverse=True):
            line = line.replace(secret, qemu_argv.REDACTED)
        log(line)
    return masked


def _leave(journal: jr.Journal, record: Dict[str, Any], log: Log, why: str) -> None:
    log("%s: left saved: %s." % (record["vm"], why))
    journal.write(dict(record, boot_unit_note=why))


def _log_restored(vm: Dict[str, Any], log: Log) -> None:
    if vm.get("action") == "restored":
        log("%s: resumed at %.6f, blackout %.3f s" % (vm["vm"], vm.get("resumed_at") or 0, vm.get("blackout_seconds") or 0))
        clock = vm.get("guest_clock") or {}
        if clock.get("synced"):
            log("%s: clock set from this host's (it was %+.3f s off); the rollout's restore sets it again once the "
                "host's own clock is synced" % (vm["vm"], clock.get("offset_before_seconds") or 0))
        elif clock:
            log("%s: clock %s" % (vm["vm"], clock.get("reason")))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog=ENTRY_POINT, description="Resume the VMs a liveupdate.cpr rollout saved for "
                                     "this boot's planned kexec (liveupdate-cpr-restore.service runs this).")
    parser.add_argument("--state-dir", default=jr.DEFAULT_STATE_DIR)
    parser.add_argument("--resource-timeout", type=float, default=120.0,
                        help="seconds to wait, in all, for the VMs' devices, files, sockets and bridges")
    parser.add_argument("--restore-timeout", type=float, default=600.0)
    args = parser.parse_args(argv)
    try:
        return restore_at_boot(args.state_dir, args.resource_timeout, args.restore_timeout)
    except CprError as exc:
        _masking(write_line, sorted(exc.secrets))("restore at boot failed: %s" % exc)
        return 1


# -- installing it ----------------------------------------------------------
@dataclass
class UnitOptions:
    venv: str = DEFAULT_VENV
    state_dir: str = jr.DEFAULT_STATE_DIR
    unit_dir: str = DEFAULT_UNIT_DIR
    restore_at_boot: bool = True
    mint_token: bool = False
    state: str = "present"
    check_mode: bool = False


def engine_dir(venv: str) -> str:
    return os.path.join(venv, "lib", "liveupdate-cpr")


def engine_sources() -> Dict[str, bytes]:
    """This collection's module_utils, read from where this file was loaded: a directory, or Ansible's payload zip."""
    here = os.path.dirname(os.path.abspath(__file__))
    if os.path.isdir(here):
        return {name: _read_bytes(os.path.join(here, name)) for name in sorted(os.listdir(here)) if name.endswith(".py")}
    import zipfile  # only here: the boot unit imports this file too, and each import costs it time

    archive, inner = here.split(".zip" + os.sep, 1)
    with zipfile.ZipFile(archive + ".zip") as payload:
        prefix = inner.replace(os.sep, "/") + "/"
        return {name[len(prefix):]: payload.read(name) for name in payload.namelist()
                if name.startswith(prefix) and name.endswith(".py") and "/" not in name[len(prefix):]}


def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


def entry_script(venv: str) -> str:
    return ("#!%(python)s\n"
            "# liveupdate.cpr's restore at boot; the engine beside it is the collection's own module_utils,\n"
            "# installed by the restore_unit module. Do not edit: the next rollout's stage rewrites both.\n"
            "import sys\n"
            "sys.path.insert(0, %(engine)r)\n"
            "from ansible_collections.liveupdate.cpr.plugins.module_utils.boot_restore import main\n"
            "sys.exit(main(sys.argv[1:]))\n") % {"python": os.path.join(venv, "bin", "python"), "engine": engine_dir(venv)}


def unit_text(venv: str, state_dir: str) -> str:
    return """[Unit]
Description=liveupdate.cpr: resume the VMs saved for this boot's planned kexec
# As early as is safe: once the root filesystem is writable (systemd-remount-fs), the state dir's and the venv's
# mounts are up, and journald can take its log. Not after the whole local-fs.target: Python's start-up overlaps the
# rest of it, and each guest's QEMU, in a unit of its own, still starts after local-fs.target (the static device
# nodes, /dev/net/tun among them, are made before it). The entry point waits, bounded, for each VM's own devices,
# files, sockets and bridges. No ordering on sshd, the network or multi-user.target, and none of them waits for it
# (DefaultDependencies=no).
DefaultDependencies=no
After=systemd-remount-fs.service systemd-journald.socket
RequiresMountsFor=%(state_dir)s %(venv)s
Conflicts=shutdown.target
Before=shutdown.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=%(script)s --state-dir %(state_dir)s
TimeoutStartSec=900
# The guests are stopped until this finishes: ahead of the rest of the boot for CPU and I/O.
Nice=-10
CPUWeight=1000
IOWeight=1000

[Install]
WantedBy=multi-user.target
""" % {"venv": venv, "state_dir": state_dir, "script": os.path.join(venv, "bin", ENTRY_POINT)}


def installed_version(venv: str) -> Optional[str]:
    try:
        text = _read_bytes(os.path.join(engine_dir(venv), PACKAGE, "version.py")).decode()
    except OSError:
        return None
    match = re.search(r'^COLLECTION_VERSION = "([^"]+)"', text, re.M)
    return match.group(1) if match else None


def _systemctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["systemctl"] + list(args), capture_output=True, text=True, check=False)


def unit_enabled() -> bool:
    return _systemctl("is-enabled", "--quiet", UNIT_NAME).returncode == 0


def status(opts: UnitOptions) -> Dict[str, Any]:
    """Whether the boot unit will restore this host's VMs at the next planned kexec, and if not, why."""
    version = installed_version(opts.venv)
    reasons = []
    if not opts.restore_at_boot:
        reasons.append("liveupdate_restore_at_boot is false")
    if not systemd_is_init():
        reasons.append("systemd is not PID 1 on this host")
    elif not os.path.exists(os.path.join(opts.unit_dir, UNIT_NAME)) or not unit_enabled():
        reasons.append("%s is not installed and enabled (playbooks/prepare_hosts.yml, or the stage, installs it)"
                       % UNIT_NAME)
    if version is None:
        reasons.append("no entry point in %s (the stage installs it)" % opts.venv)
    reason = "; ".join(reasons) or "on"
    if not reasons and version != COLLECTION_VERSION:
        # saves of this run would be refused by the installed entry point: the stage reinstalls it first
        reason = "on once the stage replaces the installed entry point %s with %s" % (version, COLLECTION_VERSION)
    return {"active": not reasons, "reason": reason, "installed_version": version,
            "collection_version": COLLECTION_VERSION}


def _write_if_changed(path: str, content: bytes, mode: int, check_mode: bool) -> bool:
    try:
        if _read_bytes(path) == content and (os.stat(path).st_mode & 0o7777) == mode:
            return False
    except OSError:
        pass
    if not check_mode:
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        temp = path + ".liveupdate-tmp"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
        os.chmod(temp, mode)
        os.rename(temp, path)
    return True


def _check_paths(opts: UnitOptions) -> None:
    for name, path in (("venv", opts.venv), ("state_dir", opts.state_dir), ("unit_dir", opts.unit_dir)):
        if not PLAIN_PATH.match(path):
            raise JournalError("%s %r is not a plain absolute path; it goes into a unit file and a script." % (name, path),
                               fix="use a path of letters, digits and _ . + - /.")


def ensure(opts: UnitOptions) -> Dict[str, Any]:
    """Install the engine, the entry point and (where systemd runs) the enabled unit; mint the next kexec's token.

    With state=absent, remove all of it instead (remove())."""
    if opts.state == "absent":
        return remove(opts)
    _check_paths(opts)
    if not os.path.exists(os.path.join(opts.venv, "bin", "python")):
        raise JournalError("the venv %s has no bin/python." % opts.venv,
                           fix="run playbooks/prepare_hosts.yml (the host_prepare role) first.")
    changed: List[str] = []
    for name, content in engine_sources().items():
        if _write_if_changed(os.path.join(engine_dir(opts.venv), PACKAGE, name), content, 0o644, opts.check_mode):
            changed.append(os.path.join(PACKAGE, name))
    if changed and not opts.check_mode:
        # compiled now, while the VMs run, not by the unit at boot, where every second is in the blackout
        import compileall

        compileall.compile_dir(engine_dir(opts.venv), quiet=1)
    script = os.path.join(opts.venv, "bin", ENTRY_POINT)
    if _write_if_changed(script, entry_script(opts.venv).encode(), 0o755, opts.check_mode):
        changed.append(script)
    if systemd_is_init():
        unit = os.path.join(opts.unit_dir, UNIT_NAME)
        if _write_if_changed(unit, unit_text(opts.venv, opts.state_dir).encode(), 0o644, opts.check_mode):
            changed.append(unit)
            if not opts.check_mode:
                _systemctl("daemon-reload")
        if not opts.check_mode and not unit_enabled():
            enabled = _systemctl("enable", UNIT_NAME)
            if enabled.returncode != 0:
                raise JournalError("systemctl enable %s failed: %s" % (UNIT_NAME, enabled.stderr.strip()),
                                   fix="read the unit file %s and systemd's log." % unit)
            changed.append("enabled " + UNIT_NAME)
    result: Dict[str, Any] = {"changed": bool(changed), "installed": changed, "unit": status(opts)}
    if opts.mint_token and not opts.check_mode:
        jr.Journal(opts.state_dir).ensure()
        result["token"] = boot_token.mint(opts.state_dir, restore_at_boot=result["unit"]["active"])
        result["changed"] = True
    return result


def remove(opts: UnitOptions) -> Dict[str, Any]:
    """Disable and delete the unit, delete the entry point and its engine, and void the restore token.

    The journal and any state files stay: VMs saved before this are restored by the rollout (vm_restore), never
    lost. A kexec already loaded with the token finds no unit to act on it."""
    if opts.mint_token:
        raise JournalError("mint_token and state=absent contradict each other: a token is for a unit that restores.",
                           fix="drop mint_token, or use state=present.")
    _check_paths(opts)
    removed: List[str] = []
    unit = os.path.join(opts.unit_dir, UNIT_NAME)
    if systemd_is_init() and (os.path.exists(unit) or unit_enabled()):
        if not opts.check_mode:
            disabled = _systemctl("disable", UNIT_NAME)
            if disabled.returncode != 0 and os.path.exists(unit):
                raise JournalError("systemctl disable %s failed: %s" % (UNIT_NAME, disabled.stderr.strip()),
                                   fix="read systemd's log, then disable and delete %s by hand." % unit)
        removed.append("disabled " + UNIT_NAME)
    for path in (unit, os.path.join(opts.venv, "bin", ENTRY_POINT), boot_token.token_path(opts.state_dir)):
        if os.path.lexists(path):
            if not opts.check_mode:
                os.unlink(path)
            removed.append(path)
    if os.path.isdir(engine_dir(opts.venv)):
        if not opts.check_mode:
            import shutil  # only here: the boot unit imports this file too

            shutil.rmtree(engine_dir(opts.venv))
        removed.append(engine_dir(opts.venv))
    if unit in removed and systemd_is_init() and not opts.check_mode:
        _systemctl("daemon-reload")
    return {"changed": bool(removed), "installed": [], "removed": removed,
            "unit": {"active": False, "reason": "removed (state=absent)", "installed_version": None,
                     "collection_version": COLLECTION_VERSION}}
