"""A real Linux test guest beside the boot sector: Debian 12 with systemd, sshd and qemu-guest-agent.

    python -m lab.linux_guest              # build (or find) the image and print where it is
    python -m lab.linux_guest boot --dir /tmp/lg   # boot one guest, print how to reach it, leave it running

The image is built like the lab host image (mmdebstrap from Debian's packages,
cached by its inputs). Its kernel is Debian's standard flavour, which has
suspend-to-RAM (checked at build); it boots with -kernel and a small initramfs.
Each VM has virtio-blk (a qcow2 overlay of the shared image), virtio-net with
user networking and an SSH port forward on 127.0.0.1, the agent's virtio-serial
channel (org.qemu.guest_agent.0) and RAM on a shared, named file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from lab.host.image import CACHE, DPKG_EXCLUDES, fresh_work_dir, inputs_key, mmdebstrap, require_tools, ssh_key
from lab.testvm import QEMU, _listening

CUSTOMIZE = Path(__file__).parent / "guest" / "customize-linux.sh"
SUITE = "bookworm"
MIRRORS = ["deb http://deb.debian.org/debian bookworm main",
           "deb http://deb.debian.org/debian-security bookworm-security main"]
PACKAGES = ["systemd-sysv", "udev", "openssh-server", "qemu-guest-agent", "util-linux-extra", "iproute2", "procps",
            "initramfs-tools", "zstd", "linux-image-amd64"]
IMAGE_SIZE = "1200M"
BUILD_STEPS = 1  # bump when ensure_image builds differently
# The standard flavour has these; Debian's cloud flavour lacks suspend, which the passthrough flow needs.
REQUIRED_KERNEL_CONFIG = ("CONFIG_SUSPEND=y", "CONFIG_VIRTIO_CONSOLE=m", "CONFIG_VIRTIO_BLK=m")
SSH_OPTIONS = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
               "-o", "BatchMode=yes", "-o", "ConnectTimeout=5", "-o", "ServerAliveInterval=2",
               "-o", "ServerAliveCountMax=3"]


@dataclass
class LinuxGuestImage:
    disk: str           # raw ext4 root filesystem; each VM boots a qcow2 overlay of it
    kernel: str
    initrd: str
    kernel_release: str
    ssh_key: str
    built_seconds: float


def image_key(pubkey: bytes) -> str:
    # the build's inputs only: the rest of this file (the VM's command line, the probes) never changes the image
    return inputs_key([SUITE, MIRRORS, PACKAGES, DPKG_EXCLUDES, IMAGE_SIZE, REQUIRED_KERNEL_CONFIG, BUILD_STEPS],
                      CUSTOMIZE.read_bytes(), pubkey)


def ensure_image(cache: Path = CACHE) -> LinuxGuestImage:
    key_file = ssh_key(cache)
    home = cache / ("linux-guest-image-" + image_key(key_file.with_suffix(".pub").read_bytes()))
    manifest = home / "image.json"
    if manifest.exists():
        return LinuxGuestImage(**json.loads(manifest.read_text()))
    require_tools(("mmdebstrap", "mkfs.ext4", "ssh-keygen", "qemu-img"), what="linux guest image")
    started = time.monotonic()
    work = fresh_work_dir(home)
    rootfs = work / "rootfs"
    print("linux guest image: building it with mmdebstrap (a few minutes, once)", file=sys.stderr)
    mmdebstrap(SUITE, rootfs, MIRRORS, PACKAGES, ["--customize-hook=%s \"$1\"" % CUSTOMIZE],
               env=dict(os.environ, LAB_PUBKEY=str(key_file.with_suffix(".pub"))))
    release = sorted(p.name[len("vmlinuz-"):] for p in (rootfs / "boot").glob("vmlinuz-*"))[-1]
    config = (rootfs / "boot" / ("config-" + release)).read_text()
    missing = [line for line in REQUIRED_KERNEL_CONFIG if line not in config.splitlines()]
    if missing:
        raise RuntimeError("linux guest image: kernel %s lacks %s" % (release, ", ".join(missing)))
    shutil.copyfile(rootfs / "boot" / ("vmlinuz-" + release), work / "vmlinuz")
    shutil.copyfile(rootfs / "boot" / ("initrd.img-" + release), work / "initrd.img")
    subprocess.run(["mkfs.ext4", "-q", "-L", "root", "-d", str(rootfs), str(work / "root.img"), IMAGE_SIZE],
                   check=True, timeout=600)
    shutil.rmtree(rootfs)
    shutil.rmtree(home, ignore_errors=True)
    work.rename(home)
    image = LinuxGuestImage(disk=str(home / "root.img"), kernel=str(home / "vmlinuz"), initrd=str(home / "initrd.img"),
                            kernel_release=release, ssh_key=str(key_file), built_seconds=round(time.monotonic() - started, 1))
    manifest.write_text(json.dumps(asdict(image), indent=1) + "\n")
    return image


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class LinuxVm:
    """One real Linux guest: QMP, agent channel and disk overlay under qmp_dir, RAM on a shared file in /dev/shm."""

    name: str
    qmp_dir: Path
    image: LinuxGuestImage
    ram_mb: int = 256
    ssh_port: int = field(default_factory=free_port)
    binary: str = QEMU
    extra: List[str] = field(default_factory=list)
    pid: Optional[int] = None

    @property
    def qmp_path(self) -> Path:
        return self.qmp_dir / (self.name + ".qmp")

    @property
    def agent_path(self) -> Path:
        return self.qmp_dir / (self.name + ".qga")

    @property
    def overlay(self) -> Path:
        return self.qmp_dir / (self.name + ".qcow2")

    @property
    def console_log(self) -> Path:
        return self.qmp_dir / (self.name + ".console.log")

    @property
    def ram_path(self) -> str:
        """On tmpfs, named after the VM and its directory: two labs may each have an hv1-vm1."""
        where = hashlib.sha256(str(self.qmp_dir).encode()).hexdigest()[:8]
        return "/dev/shm/liveupdate-linux-%s-%s" % (where, self.name)

    def argv(self) -> List[str]:
        size = "%dM" % self.ram_mb
        # S3 on, so the guest can be suspended to RAM (guest_suspend) and woken (wakeup-suspend-support)
        return [self.binary, "-name", "guest=%s,debug-threads=on" % self.name, "-accel", "tcg", "-machine", "q35",
                "-global", "ICH9-LPC.disable_s3=0", "-smp", "1", "-m", size, "-nodefaults", "-display", "none",
                "-object", "memory-backend-file,id=ram0,size=%s,mem-path=%s,share=on" % (size, self.ram_path),
                "-machine", "memory-backend=ram0",
                "-kernel", self.image.kernel, "-initrd", self.image.initrd,
                "-append", "root=/dev/vda rw console=ttyS0 quiet",
                "-drive", "file=%s,format=qcow2,if=virtio" % self.overlay,
                "-netdev", "user,id=net0,hostfwd=tcp:127.0.0.1:%d-:22" % self.ssh_port,
                "-device", "virtio-net-pci,netdev=net0",
                "-chardev", "socket,id=qga0,path=%s,server=on,wait=off" % self.agent_path,
                "-device", "virtio-serial-pci",
                "-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
                "-serial", "file:%s" % self.console_log,
                "-qmp", "unix:%s,server=on,wait=off" % self.qmp_path] + self.extra

    def start(self) -> LinuxVm:
        self.qmp_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", self.image.disk,
                        str(self.overlay)], check=True, timeout=30)
        with open(self.qmp_dir / (self.name + ".qemu.log"), "ab") as log:
            process = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
                                       start_new_session=True)
        self.pid = process.pid
        deadline = time.monotonic() + 20
        while not _listening(self.qmp_path):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("QEMU for %s did not start: %s" % (
                    self.name, (self.qmp_dir / (self.name + ".qemu.log")).read_text(errors="replace")))
            time.sleep(0.05)
        return self

    def ssh(self, command: Sequence[str], timeout: float = 30) -> str:
        """Run a command in the guest as root; its stdout. sshd hands the guest's shell one string: quote each word."""
        login = ["ssh", *SSH_OPTIONS, "-i", self.image.ssh_key, "-p", str(self.ssh_port), "root@127.0.0.1"]
        done = subprocess.run(login + ["--", shlex.join(command)], capture_output=True, text=True, timeout=timeout,
                              check=False)
        if done.returncode != 0:
            raise RuntimeError("ssh to %s: %s exited %d: %s" % (
                self.name, " ".join(command), done.returncode, done.stderr.strip()))
        return done.stdout

    def wait_booted(self, timeout: float = 120) -> float:
        """Seconds until SSH answers and the agent is running in the guest."""
        started = time.monotonic()
        while True:
            try:
                if self.ssh(["systemctl", "is-active", "qemu-guest-agent"], timeout=15).strip() == "active":
                    return round(time.monotonic() - started, 1)
            except (RuntimeError, subprocess.TimeoutExpired):
                pass
            if time.monotonic() - started > timeout:
                raise RuntimeError("guest %s did not boot to SSH and its agent within %.0f s; console: %s" % (
                    self.name, timeout, self.console_log.read_text(errors="replace")[-2000:]))
            time.sleep(1)

    def clock_offset(self, samples: int = 5) -> float:
        """The guest's clock minus the host's, over one SSH session: the guest answers each line with its time, and
        the sample with the shortest round trip counts, at its middle (an SSH login per sample would add its own
        variable delay, longest right after a resume, when the new QEMU's code cache is cold)."""
        with subprocess.Popen(["ssh", *SSH_OPTIONS, "-i", self.image.ssh_key, "-p", str(self.ssh_port), "root@127.0.0.1",
                               "--", "while read -r _; do date +%s.%N; done"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, bufsize=1) as session:
            assert session.stdin is not None and session.stdout is not None
            best = None
            for _sample in range(samples + 1):  # the first answer also waits for the login
                asked = time.time()
                session.stdin.write("\n")
                session.stdin.flush()
                guest = float(session.stdout.readline())
                answered = time.time()
                if best is None or answered - asked < best[0]:
                    best = (answered - asked, guest - (asked + answered) / 2)
            session.stdin.close()
            session.wait(timeout=30)
        return round(best[1], 3)

    def facts(self) -> Dict[str, object]:
        """What a resume must keep: the boot id, the uptime, a process started before and a file written before."""
        out = self.ssh(["sh", "-c", "cat /proc/sys/kernel/random/boot_id; cut -d' ' -f1 /proc/uptime; "
                                    "cat /root/marker 2>/dev/null || echo none; "
                                    "kill -0 \"$(cat /root/sleeper.pid 2>/dev/null || echo none)\" 2>/dev/null "
                                    "&& echo alive || echo gone"]).split()
        return {"boot_id": out[0], "uptime": float(out[1]), "marker": out[2], "sleeper": out[3]}

    def plant(self, marker: str) -> None:
        """A file and a long-lived process that a resume must keep."""
        if not marker.isalnum():
            raise ValueError("marker must be letters and digits: it goes into a shell command in the guest")
        self.ssh(["sh", "-c", "echo %s > /root/marker && sync && (setsid sleep 100000 </dev/null >/dev/null 2>&1 & "
                              "echo $! > /root/sleeper.pid)" % marker])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", nargs="?", choices=["image", "boot"], default="image")
    parser.add_argument("--dir", type=Path, default=Path("/tmp/liveupdate-linux-guest"))
    args = parser.parse_args()
    image = ensure_image()
    if args.action == "image":
        print(json.dumps(asdict(image), indent=1))
        return 0
    vm = LinuxVm("linux1", args.dir, image).start()
    print(json.dumps({"vm": vm.name, "pid": vm.pid, "qmp": str(vm.qmp_path), "agent": str(vm.agent_path),
                      "ssh": "ssh -i %s -p %d root@127.0.0.1" % (image.ssh_key, vm.ssh_port),
                      "boot_seconds": vm.wait_booted()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
