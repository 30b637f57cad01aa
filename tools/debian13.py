"""A Debian 13 (trixie) control node in a chroot: the set-up script, then the local fleet rollout on ansible-core 2.21.

    python -m tools.debian13            # make debian13: build (or find) the chroot, set up and roll out in it

The chroot is Debian 13 from Debian's packages (mmdebstrap --variant=apt, nothing else), in which
tools/install-system-packages.sh installed everything (its trixie branch: Debian's own QEMU 10.0, no backports), plus
a venv of the newest ansible-core that Debian 13's Python 3.13 runs. It is cached under build/cache, keyed by those
inputs. Each run copies the working tree into it, runs the set-up script again (everything is there: it must exit at
once), then boots a local fleet lab of real QEMU VMs inside the chroot and runs prepare-hosts.yml and
kernel-live-update.yml over it with that ansible-core, and checks every VM resumed on the new QEMU build.

The chroot runs in a private mount namespace (unshare), so its /proc, /sys and /dev mounts vanish with it on every
path, a failure or a kill included, and never show on the host where a stray `rm -r` could follow them.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from lab.host.image import CACHE, DPKG_EXCLUDES, fresh_work_dir, inputs_key, mmdebstrap, require_tools

ROOT = Path(__file__).resolve().parents[1]
SETUP = ROOT / "tools" / "install-system-packages.sh"
SUITE = "trixie"
MIRRORS = [
    "deb http://deb.debian.org/debian trixie main",
    "deb http://deb.debian.org/debian trixie-updates main",
    "deb http://deb.debian.org/debian-security trixie-security main",
]
ANSIBLE_CORE = "ansible-core>=2.21,<2.22"
VENV = "/opt/ansible-core-2.21"
SRC = "/src"                         # the working tree's copy inside the chroot
LAB = "/tmp/lu-debian13-fleet"       # inside the chroot; kill_all matches QEMUs by this path, so keep it distinctive
HOSTS, VMS = 2, 1
LOGS = "build/debian13"              # ansible's output, under SRC, copied back to the working tree's build/
# What pip needs to reach the index from the chroot; the host's local paths (find-links, constraints, file:// indexes)
# do not exist there.
PIP_KEYS = ("index-url", "extra-index-url", "trusted-host", "cert", "proxy", "timeout", "default-timeout")
PIP_CA = "/etc/pip-host-ca.crt"
CHROOT_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
              "LANG": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive"}
# A fixed script; the root, the working directory and the command come as its arguments.
ENTER = """set -e
root=$1 dir=$2
shift 2
mount -t proc proc "$root/proc"
mount --rbind /sys "$root/sys"
mount --rbind /dev "$root/dev"
exec chroot "$root" /usr/bin/env -C "$dir" "$@"
"""
TIMEOUT = 1800


def in_chroot(rootfs: Path, argv: List[str], cwd: str = "/", capture: bool = False) -> str:
    command = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", ENTER, "enter", str(rootfs), cwd]
    done = subprocess.run(command + argv, env=CHROOT_ENV, check=True, timeout=TIMEOUT, text=True,
                          stdout=subprocess.PIPE if capture else None)
    return done.stdout or ""


def kill_leftovers(rootfs: Path) -> None:
    """Any process still rooted in the chroot (a QEMU of a lab that did not get to destroy itself)."""
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.readlink("/proc/%s/root" % entry) == str(rootfs):
                os.kill(int(entry), signal.SIGKILL)
        except OSError:
            continue


def copy_tree(rootfs: Path) -> None:
    """The working tree as git sees it (uncommitted changes included), nothing of build/ or .venv."""
    dest = rootfs / SRC.lstrip("/")
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir()
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout
    subprocess.run(["rsync", "-a", "--from0", "--files-from=-", "./", str(dest) + "/"], input=listed, cwd=ROOT,
                   check=True)


def host_pip_config() -> Dict[str, str]:
    """The host's pip settings for reaching the index (`pip config list`, environment included)."""
    listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                            check=True).stdout
    found: Dict[str, str] = {}
    for line in listed.splitlines():
        if "=" not in line:
            continue
        name, value = line.split("=", 1)
        key = name.rsplit(".", 1)[-1]
        value = value.strip("'\"")
        if key in PIP_KEYS:
            kept = " ".join(word for word in value.split() if not word.startswith("file:"))
            if kept:
                found[key] = kept
    return found


def write_pip_config(rootfs: Path) -> None:
    settings = host_pip_config()
    if "cert" in settings:  # the host's CA bundle, with whatever CA its egress needs
        shutil.copyfile(settings["cert"], rootfs / PIP_CA.lstrip("/"))
        settings["cert"] = PIP_CA
    (rootfs / "etc" / "pip.conf").write_text(
        "# Written by tools/debian13.py from the host's pip configuration.\n[global]\n"
        + "".join("%s = %s\n" % item for item in sorted(settings.items())))


def chroot_key() -> str:
    """What the chroot is made of: the build steps' code, not the whole file, so a change to the rollout keeps it.

    The pip settings are not an input: they only say how to reach the index, and every run writes them afresh."""
    code = "".join(inspect.getsource(step) for step in (ensure_chroot, mmdebstrap))
    return inputs_key([SUITE, MIRRORS, DPKG_EXCLUDES, ANSIBLE_CORE, VENV], code.encode(), SETUP.read_bytes(),
                      (ROOT / "requirements.txt").read_bytes())


def ensure_chroot(cache: Path = CACHE) -> Dict[str, Any]:
    home = cache / ("debian13-chroot-" + chroot_key())
    manifest = home / "chroot.json"
    if manifest.exists():
        return dict(json.loads(manifest.read_text()), rootfs=str(home / "rootfs"), cached=True)
    require_tools(("mmdebstrap", "unshare", "rsync", "git"), "debian13")
    work = fresh_work_dir(home)
    rootfs = work / "rootfs"
    timings: Dict[str, float] = {}
    started = time.monotonic()
    print("debian13: building the Debian 13 root filesystem with mmdebstrap (once)", file=sys.stderr)
    mmdebstrap(SUITE, rootfs, MIRRORS, [])
    timings["mmdebstrap_s"] = round(time.monotonic() - started, 1)
    try:
        copy_tree(rootfs)
        started = time.monotonic()
        print("debian13: tools/install-system-packages.sh on a bare Debian 13", file=sys.stderr)
        in_chroot(rootfs, [SRC + "/tools/install-system-packages.sh"])
        timings["setup_script_cold_s"] = round(time.monotonic() - started, 1)
        sources = [rootfs / "etc/apt/sources.list", *(rootfs / "etc/apt/sources.list.d").glob("*")]
        added = [str(path) for path in sources if path.is_file() and "backports" in path.read_text()]
        if added:  # Debian 13's own QEMU has cpr-reboot: the trixie branch must not add a backports suite
            raise RuntimeError("debian13: the set-up script added backports: %s" % ", ".join(added))
        write_pip_config(rootfs)
        started = time.monotonic()
        in_chroot(rootfs, ["python3", "-m", "venv", VENV])
        in_chroot(rootfs, [VENV + "/bin/pip", "install", "--quiet", "--disable-pip-version-check",
                           "-r", SRC + "/requirements.txt", ANSIBLE_CORE])
        timings["venv_s"] = round(time.monotonic() - started, 1)
        versions = [in_chroot(rootfs, argv, capture=True).splitlines()[0] for argv in (
            ["cat", "/etc/debian_version"], ["python3", "--version"], ["qemu-system-x86_64", "--version"],
            [VENV + "/bin/ansible", "--version"])]
    finally:
        kill_leftovers(rootfs)
    built = {"versions": versions, "timings": timings}
    shutil.rmtree(home, ignore_errors=True)
    work.rename(home)
    manifest.write_text(json.dumps(built, indent=1) + "\n")
    return dict(built, rootfs=str(home / "rootfs"), cached=False)


def main() -> int:
    started = time.monotonic()
    chroot = ensure_chroot()
    rootfs = Path(chroot["rootfs"])
    timings = {"chroot_s": round(time.monotonic() - started, 1)}
    try:
        copy_tree(rootfs)
        write_pip_config(rootfs)
        begun = time.monotonic()
        in_chroot(rootfs, [SRC + "/tools/install-system-packages.sh"])  # everything is there: exits at once
        timings["setup_script_s"] = round(time.monotonic() - begun, 1)
        begun = time.monotonic()
        printed = in_chroot(rootfs, [VENV + "/bin/python", "-m", "tools.debian13", "rollout"], cwd=SRC, capture=True)
        outcome = json.loads(printed.splitlines()[-1])
        timings["rollout_s"] = round(time.monotonic() - begun, 1)
    finally:
        kill_leftovers(rootfs)
        logs = rootfs / SRC.lstrip("/") / LOGS
        if logs.is_dir():
            shutil.copytree(logs, ROOT / LOGS, dirs_exist_ok=True)
    timings["total_s"] = round(time.monotonic() - started, 1)
    print(json.dumps(dict(chroot, outcome=outcome, timings=timings), indent=1))
    return 0


# Inside the chroot, with its Python 3.13 and ansible-core 2.21.

def ansible_playbook(name: str, argv: List[str]) -> str:
    env = dict(os.environ, PATH="%s/bin:%s" % (VENV, os.environ["PATH"]), ANSIBLE_NOCOLOR="1")
    done = subprocess.run([VENV + "/bin/ansible-playbook", *argv], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT, check=False)
    output = done.stdout + done.stderr
    logs = ROOT / LOGS
    logs.mkdir(parents=True, exist_ok=True)
    (logs / (name + ".log")).write_text(output)
    if done.returncode != 0:
        raise RuntimeError("%s failed (rc %d), see %s/%s.log:\n%s" % (name, done.returncode, LOGS, name, output[-4000:]))
    return output


def rollout() -> Dict[str, Any]:
    from lab import local_fleet as fleet  # needs qemu.qmp: the chroot's venv has it, the host's system Python need not

    lab = Path(LAB)
    fleet.destroy(lab)
    timings: Dict[str, float] = {}
    try:
        started = time.monotonic()
        fleet.create(lab, hosts=HOSTS, vms=VMS)
        before = {vm["vm"]: vm for vm in fleet.probe_all(lab)}
        timings["fleet_create_s"] = round(time.monotonic() - started, 1)
        inventory = str(lab / "inventory.yml")
        outputs = []
        for name, argv in (("prepare-hosts", ["playbooks/prepare-hosts.yml"]),
                           ("kernel-live-update", ["playbooks/kernel-live-update.yml", "-e",
                                                   json.dumps({"liveupdate_report_dir": LAB + "/reports"})])):
            started = time.monotonic()
            outputs.append(ansible_playbook(name, ["-i", inventory, *argv]))
            timings[name + "_s"] = round(time.monotonic() - started, 1)
        new_build = hashlib.sha256((lab / "packages" / "qemu-system-x86_64").read_bytes()).hexdigest()
        problems: List[str] = []
        for vm in fleet.probe_all(lab):
            was: Optional[Dict[str, Any]] = before.get(vm["vm"])
            if not (was and vm["now"]["status"] == "running" and vm["now"]["nonce"] == was["nonce"]
                    and vm["now"]["pattern_ok"] and vm["exe_sha256"] == new_build):
                problems.append("%s: not resumed on the new QEMU build with its RAM intact: %r" % (vm["vm"], vm))
        report = json.loads((lab / "reports" / "latest.json").read_text())
        statuses = {host["host"]: host["status"] for host in report["hosts"]}
        if statuses != {"hv%d" % h: "updated" for h in range(1, HOSTS + 1)}:
            problems.append("report: %r" % statuses)
        if problems:
            raise RuntimeError("; ".join(problems))
        warnings = sorted({line.strip() for output in outputs for line in output.splitlines()
                           if "WARNING" in line or "DEPRECATION" in line})
        return {"vms": sorted(before), "report": statuses, "warnings": warnings, "timings": timings}
    finally:
        fleet.destroy(lab)


if __name__ == "__main__":
    if sys.argv[1:] == ["rollout"]:
        print(json.dumps(rollout()))
        sys.exit(0)
    sys.exit(main())
