# Copyright: liveupdate.cpr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The host's kernels: the one running, those installed, the newest available, and kexec support."""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple, Union

from ansible_collections.liveupdate.cpr.plugins.module_utils import journal as jr
from ansible_collections.liveupdate.cpr.plugins.module_utils.discovery import systemd_is_init
from ansible_collections.liveupdate.cpr.plugins.module_utils.errors import NotReadyError
from ansible_collections.liveupdate.cpr.plugins.module_utils.paths import read_text

# Debian: 6.1.0-28-amd64, 6.12.38+deb12-cloud-amd64 -> flavour amd64, cloud-amd64
DEBIAN_FLAVOUR = re.compile(r"^[0-9][^-]*(?:-[0-9][^-]*)*-(?P<flavour>[a-z].*)$")
DEBIAN_SKIP = ("-unsigned", "-dbg")
# apt's own stamp of its last successful update (Debian's apt touches it), else the lists' directory, as the apt
# module's cache_valid_time reads them
APT_UPDATE_STAMP = "/var/lib/apt/periodic/update-success-stamp"
APT_LISTS = "/var/lib/apt/lists"
REFRESH_TIMEOUT = 300.0
# another apt (apt-daily, an operator) holding the lists' lock is waited for this long, as the apt module's lock_timeout
APT_LOCK_WAIT = 60.0


@dataclass
class KernelOptions:
    version: str = ""
    cmdline_overrides: Optional[Dict[str, Any]] = None
    # whether to ask the package manager what it offers: seconds on a host with large package lists, and moot when
    # no kernel will be installed
    offered: bool = True
    # the reboot asked for, and whether a firmware reboot may stand in for a kexec that cannot be used
    reboot_method: str = "kexec"
    fallback_to_reboot: bool = False
    check_mode: bool = False


def effective_reboot(requested: str, kexec_usable: bool, fallback_to_reboot: bool) -> str:
    """The reboot a host really gets: kexec where it works, else a firmware reboot where allowed, else refused.
    The one rule, for the plan (host_plan) and for the kexec role (kernel_info's ``reboot``)."""
    if requested in ("reboot", "none"):
        return requested
    if kexec_usable:
        return "kexec"
    return "reboot" if fallback_to_reboot else "refused"


def version_key(version: str) -> Tuple[Tuple[int, Union[int, str]], ...]:
    return tuple((0, int(token)) if token.isdigit() else (1, token) for token in re.findall(r"\d+|[A-Za-z]+", version))


def family() -> str:
    if shutil.which("dpkg") and shutil.which("apt-get"):
        return "debian"
    if shutil.which("rpm") and (shutil.which("dnf") or shutil.which("yum")):
        return "redhat"
    return "unknown"


def flavour_of(version: str) -> str:
    match = DEBIAN_FLAVOUR.match(version)
    return match.group("flavour") if match else ""


def installed_kernels() -> List[str]:
    found = [os.path.basename(path)[len("vmlinuz-"):] for path in glob.glob("/boot/vmlinuz-*")]
    return sorted((v for v in found if not v.endswith(".old") and "rescue" not in v), key=version_key)


def of_flavour(versions: List[str], flavour: str) -> List[str]:
    """Only kernels of the running flavour are targets: a -rt or -cloud kernel beside -amd64 is another product."""
    return [v for v in versions if flavour_of(v) == flavour]


def _run(argv: List[str]) -> str:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    except OSError:
        return ""
    return result.stdout if result.returncode == 0 else ""


def available_kernels(os_family: str, flavour: str) -> List[str]:
    """Kernel versions the package manager can install, for the running flavour."""
    if os_family == "debian":
        names = _run(["apt-cache", "search", "--names-only", "^linux-image-[0-9]"]).split()
        versions = [n[len("linux-image-"):] for n in names if n.startswith("linux-image-") and not n.endswith(DEBIAN_SKIP)]
        return sorted(of_flavour(versions, flavour), key=version_key)
    if os_family == "redhat":
        tool = shutil.which("dnf") or "dnf"
        lines = _run([tool, "-q", "repoquery", "--qf", "%{version}-%{release}.%{arch}", "kernel-core"]).split()
        return sorted(set(lines), key=version_key)
    return []


def lists_age(now: Optional[float] = None) -> Optional[float]:
    """Seconds since apt last refreshed its lists, or None when it never did."""
    for path in (APT_UPDATE_STAMP, APT_LISTS):
        try:
            return max(0.0, (time.time() if now is None else now) - os.stat(path).st_mtime)
        except OSError:
            continue
    return None


def refresh_package_lists(valid_time: float) -> Dict[str, Any]:
    """The package manager's metadata refreshed, so that a plan sees the kernels on offer: ``apt-get update`` unless the
    lists are younger than ``valid_time`` seconds, or ``dnf makecache`` (which keeps its own expiry). Metadata only:
    nothing is installed, so it also runs in check mode. Raises NotReadyError when the refresh fails."""
    os_family = family()
    if os_family == "debian":
        age = lists_age()
        if age is not None and age < valid_time:
            return {"refreshed": False, "age_seconds": round(age)}
        argv = ["apt-get", "update", "-q"]
    elif os_family == "redhat":
        argv = [shutil.which("dnf") or "yum", "makecache", "-q"]
    else:
        return {"refreshed": False, "age_seconds": None}
    deadline = time.monotonic() + APT_LOCK_WAIT
    attempts = 0
    while True:
        attempts += 1
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=REFRESH_TIMEOUT, check=False,
                                  stdin=subprocess.DEVNULL)
            rc, output = done.returncode, (done.stderr.strip() or done.stdout.strip())
        except subprocess.TimeoutExpired:
            rc, output = -1, "still running after %.0f s, and stopped" % REFRESH_TIMEOUT
        except OSError as exc:
            rc, output = -1, exc.strerror or str(exc)
        if rc == 0:
            return {"refreshed": True, "age_seconds": 0}
        # a held lock is waited for; any other failure that ended (a mirror that did not answer) is tried 3 times
        locked = "Could not get lock" in output
        if (locked and time.monotonic() < deadline) or (not locked and rc != -1 and attempts < 3):
            time.sleep(5 if locked else 2 * attempts)
            continue
        raise NotReadyError(
            "the package lists could not be refreshed for the plan: `%s` failed (%s): %s" % (
                " ".join(argv), "exit %d" % rc if rc >= 0 else "did not finish", output[-600:] or "no output"),
            fix="fix the host's package sources (or whatever holds the package manager's lock), or set "
                "liveupdate_refresh_package_lists=false to plan on the lists the host has.")


def paths_for(os_family: str, version: str) -> Dict[str, str]:
    initrd = "/boot/initramfs-%s.img" % version if os_family == "redhat" else "/boot/initrd.img-%s" % version
    package = ("kernel-core-%s" if os_family == "redhat" else "linux-image-%s") % version
    return {"kernel_path": "/boot/vmlinuz-%s" % version, "initrd_path": initrd, "package": package}


def kexec_support() -> Dict[str, Any]:
    binary = shutil.which("kexec") or next((p for p in ("/sbin/kexec", "/usr/sbin/kexec") if os.path.exists(p)), None)
    disabled = _read_flag("/proc/sys/kernel/kexec_load_disabled")
    reasons = []
    if not binary:
        reasons.append("kexec-tools is not installed")
    if disabled:
        reasons.append("kernel.kexec_load_disabled is 1 (it cannot be turned off again until reboot)")
    if os.path.exists("/sys/kernel/security/lockdown") and "[integrity]" in read_text("/sys/kernel/security/lockdown"):
        reasons.append("kernel lockdown (integrity) refuses unsigned kexec images")
    return {"binary": binary, "usable": not reasons, "reasons": reasons,
            "loaded": _read_flag("/sys/kernel/kexec_loaded")}


def _read_flag(path: str) -> bool:
    return read_text(path) == "1"


def kexec_cmdline(current: str, overrides: Optional[Dict[str, Any]] = None) -> str:
    """/proc/cmdline minus BOOT_IMAGE, with overrides (value None removes a key)."""
    all_words = current.split()
    # words after a lone "--" belong to init, not to the kernel
    split = all_words.index("--") if "--" in all_words else len(all_words)
    words = [w for w in all_words[:split] if not w.startswith(("BOOT_IMAGE=", "initrd="))]
    for key, value in (overrides or {}).items():
        words = [w for w in words if w.split("=", 1)[0] != key]
        if value is not None:
            words.append(key if value == "" else "%s=%s" % (key, value))
    return " ".join(words + all_words[split:])


def kernel_facts(opts: KernelOptions) -> Dict[str, Any]:
    running = os.uname().release
    os_family = family()
    flavour = flavour_of(running)
    installed = installed_kernels()
    available = available_kernels(os_family, flavour) if opts.offered else []
    candidates = sorted(set(of_flavour(installed, flavour)) | set(available), key=version_key)
    newest = candidates[-1] if candidates else running
    target = opts.version or newest
    cmdline = read_text("/proc/cmdline")
    facts: Dict[str, Any] = {
        "changed": False, "running": running, "boot_id": jr.boot_id(), "cmdline": cmdline,
        "kexec_cmdline": kexec_cmdline(cmdline, opts.cmdline_overrides),
        "os_family": os_family, "flavour": flavour, "installed": installed, "available": available,
        "target": target, "target_installed": target in installed, "needed": target != running,
        "systemd": systemd_is_init(), "kexec": kexec_support(),
        "newer_than_running": version_key(target) > version_key(running),
    }
    facts["reboot"] = effective_reboot(opts.reboot_method, facts["kexec"]["usable"], opts.fallback_to_reboot)
    facts.update(paths_for(os_family, target))
    return facts
