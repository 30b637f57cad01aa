"""The lab's hypervisor-host image: Debian 13 (trixie) from Debian's packages, cached by its inputs.

    python -m lab.host.image            # build (or find) it and print where it is

It holds systemd, openssh-server, python3-venv, kexec-tools, ndctl, trixie's own
QEMU (10.0) and its 6.12 cloud kernel, which it boots. What trixie-backports
offers, looked up at build time, waits in a local apt repository inside the
image (not installed): the newest cloud kernel (7.3) and the QEMU (11.1) that
would replace the installed packages, with whatever else apt fetches to install
them. The repository keeps backports' Release flags (NotAutomatic: yes,
ButAutomaticUpgrades: yes), so, as on a real trixie host, apt moves QEMU there
only when told the target release.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from lab.testvm import LAB_HOST_GUEST_RTC_HZ, guest_disk

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / "build" / "cache"
CUSTOMIZE = Path(__file__).with_name("customize.sh")
ZIP_BYTECODE_CACHE = Path(__file__).with_name("zip_bytecode_cache.py")
SUITE = "trixie"
BACKPORTS_SUITE = "trixie-backports"
MIRRORS = [
    "deb http://deb.debian.org/debian trixie main",
    "deb http://deb.debian.org/debian trixie-updates main",
    "deb http://deb.debian.org/debian-security trixie-security main",
    "deb http://deb.debian.org/debian trixie-backports main",
]
PACKAGES = [
    "systemd-sysv", "udev", "dbus", "openssh-server", "python3", "python3-venv", "python3-apt", "apt-utils",
    "kexec-tools", "iproute2", "initramfs-tools", "zstd", "ndctl", "procps", "linux-image-cloud-amd64",
    "qemu-system-x86",
]
# the cloud kernel's metapackage: its backports version depends on the newest backports kernel
NEWER_KERNEL_META = "linux-image-cloud-amd64"
# the QEMU packages the image has; their backports versions wait in the local repository
QEMU_PACKAGES = ["qemu-system-x86", "qemu-system-common", "qemu-system-data"]
DPKG_EXCLUDES = ["path-exclude=/usr/share/man/*", "path-exclude=/usr/share/locale/*",
                 "path-include=/usr/share/locale/locale.alias", "path-exclude=/usr/share/doc/*",
                 "path-include=/usr/share/doc/*/copyright", "path-exclude=/usr/share/info/*"]
IMAGE_SIZE = "2G"
BUILD_TIMEOUT = 1800


@dataclass
class HostImage:
    disk: str          # raw ext4 root filesystem; each host boots a qcow2 overlay of it
    kernel: str        # the 6.12 kernel and initrd the hosts boot with -kernel
    initrd: str
    kernel_release: str
    newer_kernel_package: str
    qemu_version: str          # the installed QEMU, as dpkg names it (1:10.0.13+ds-0+deb13u1)
    newer_qemu_version: str    # what the local repository's trixie-backports offers
    ssh_key: str       # private key that logs in as root
    built_seconds: float


def ssh_key(cache: Path = CACHE) -> Path:
    """The lab's root login key, made once; its public half is an input of the image."""
    keys = cache / "lab-ssh"
    keys.mkdir(mode=0o700, parents=True, exist_ok=True)
    private = keys / "id_ed25519"
    if not private.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "liveupdate-lab", "-f", str(private)],
                       check=True, timeout=30)
    return private


def inputs_key(inputs: object, *parts: bytes) -> str:
    """A cache key: the hash of JSON-able settings and of file contents (build scripts, keys)."""
    digest = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode())
    for part in parts:
        digest.update(hashlib.sha256(part).digest())
    return digest.hexdigest()[:16]


def image_key(pubkey: bytes, guest: bytes) -> str:
    return inputs_key([MIRRORS, PACKAGES, BACKPORTS_SUITE, NEWER_KERNEL_META, QEMU_PACKAGES, DPKG_EXCLUDES, IMAGE_SIZE],
                      Path(__file__).read_bytes(), CUSTOMIZE.read_bytes(), ZIP_BYTECODE_CACHE.read_bytes(), pubkey, guest)


def fresh_work_dir(home: Path) -> Path:
    """An empty root-only HOME.tmp to build into; rename it over home only once the build is whole."""
    work = home.with_suffix(".tmp")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(mode=0o700, parents=True)
    return work


def mmdebstrap(suite: str, rootfs: Path, mirrors: List[str], include: List[str], options: Sequence[str] = (),
               env: Optional[Dict[str, str]] = None) -> None:
    """A Debian root filesystem from Debian's packages: variant apt, no recommends, no docs, man pages or locales."""
    command = ["mmdebstrap", "--variant=apt", "--mode=root", "--quiet", "--aptopt=APT::Install-Recommends \"false\""]
    command += ["--include=" + ",".join(include)] if include else []
    command += ["--dpkgopt=" + option for option in DPKG_EXCLUDES] + list(options)
    subprocess.run(command + [suite, str(rootfs)] + mirrors, check=True, env=env, timeout=BUILD_TIMEOUT)


def ensure_image(cache: Path = CACHE) -> HostImage:
    key_file = ssh_key(cache)
    guest = guest_disk(cache, hz=LAB_HOST_GUEST_RTC_HZ, clock="rtc")
    home = cache / ("lab-host-image-" + image_key(key_file.with_suffix(".pub").read_bytes(), guest.read_bytes()))
    manifest = home / "image.json"
    if manifest.exists():
        return HostImage(**json.loads(manifest.read_text()))
    require_tools()
    started = time.monotonic()
    work = fresh_work_dir(home)
    rootfs = work / "rootfs"
    env = dict(os.environ, LAB_PUBKEY=str(key_file.with_suffix(".pub")), LAB_GUEST_DISK=str(guest),
               LAB_NEWER_KERNEL_META=NEWER_KERNEL_META, LAB_BACKPORTS=BACKPORTS_SUITE,
               LAB_QEMU_PACKAGES=" ".join(QEMU_PACKAGES), LAB_SUITE=SUITE, LAB_ZIP_BYTECODE_CACHE=str(ZIP_BYTECODE_CACHE))
    print("lab image: building the host root filesystem with mmdebstrap (a few minutes, once)", file=sys.stderr)
    # keep the apt lists: they are those of the local repository only, as on a host with a current cache
    mmdebstrap(SUITE, rootfs, MIRRORS, PACKAGES,
               ["--skip=cleanup/apt/lists", "--customize-hook=%s \"$1\"" % CUSTOMIZE], env=env)
    release = _only(sorted(p.name[len("vmlinuz-"):] for p in (rootfs / "boot").glob("vmlinuz-*")), "kernel")
    repo = rootfs / "srv" / "liveupdate-repo"  # one flat repository per suite below it
    newer = (repo / "NEWER_KERNEL").read_text().strip()
    qemu_versions = (repo / "QEMU_VERSIONS").read_text().split()
    shutil.copyfile(rootfs / "boot" / ("vmlinuz-" + release), work / "vmlinuz")
    shutil.copyfile(rootfs / "boot" / ("initrd.img-" + release), work / "initrd.img")
    disk = work / "root.img"
    subprocess.run(["mkfs.ext4", "-q", "-L", "root", "-d", str(rootfs), str(disk), IMAGE_SIZE], check=True,
                   timeout=600)
    shutil.rmtree(rootfs)
    shutil.rmtree(home, ignore_errors=True)
    work.rename(home)
    image = HostImage(disk=str(home / "root.img"), kernel=str(home / "vmlinuz"), initrd=str(home / "initrd.img"),
                      kernel_release=release, newer_kernel_package=newer, qemu_version=qemu_versions[0],
                      newer_qemu_version=qemu_versions[1], ssh_key=str(key_file),
                      built_seconds=round(time.monotonic() - started, 1))
    manifest.write_text(json.dumps(asdict(image), indent=1) + "\n")
    return image


def _only(found: List[str], what: str) -> str:
    if len(found) != 1:
        raise RuntimeError("lab image: expected one %s in the root filesystem, found %s" % (what, found or "none"))
    return found[0]


def require_tools(tools: Sequence[str] = ("mmdebstrap", "mkfs.ext4", "ssh-keygen"), what: str = "lab image") -> None:
    missing = [tool for tool in tools if not shutil.which(tool)]
    if missing:
        raise RuntimeError("%s: %s missing; run `make setup`." % (what, ", ".join(missing)))
    if os.geteuid() != 0:
        raise RuntimeError("%s: mmdebstrap --mode=root needs root; run make demo, test or debian13 as root." % what)


if __name__ == "__main__":
    print(json.dumps(asdict(ensure_image()), indent=1))
