"""The virtual hypervisor lab: Debian 13 host VMs that really kexec, each running nested test guests.

    python -m lab.host.fleet create --dir /tmp/lu-hosts --hosts 2 --vms 2
    python -m lab.host.fleet probe --dir /tmp/lu-hosts
    python -m lab.host.fleet ssh --dir /tmp/lu-hosts hv1 -- uname -r
    python -m lab.host.fleet power-off --dir /tmp/lu-hosts hv3     # its QEMU killed: a host that never comes back
    python -m lab.host.fleet power-on --dir /tmp/lu-hosts hv3      # a cold boot, as a BMC's power-on
    python -m lab.host.fleet destroy --dir /tmp/lu-hosts

Each host boots the lab image (lab.host.image) under TCG with SSH on a loopback
port. Its nested guests keep their RAM on /dev/dax0.0, carved out of persistent
memory: `memmap=256M!1G` (survives kexec, not a firmware reboot) or an emulated
NVDIMM backed by a file here (survives both). Every step has a timeout, and a
failed create tears down what it started.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import yaml

from lab.host.image import BACKPORTS_SUITE, HostImage, ensure_image
from lab.host.inside import HOME as HOME_INSIDE
from lab.host.inside import QMP_DIR as QMP_DIR_INSIDE
from lab.local_fleet import IndentedDumper
from lab.testvm import kill_all, qemu_available

ROOT = Path(__file__).resolve().parents[2]
INSIDE_DIR = HOME_INSIDE + "/tools"
INSIDE_FILES = [ROOT / "lab" / "guest_probe.py", ROOT / "lab" / "host" / "inside.py"]
PMEM_SIZE_MB = 256
BOOT_TIMEOUT = 300
FIRST_BOOT_TIMEOUT = 180  # a new host, booted alone: 14 s on an idle machine, 46 s on a slow one
STEP_TIMEOUT = 120
# x86-64-v2 and RDRAND (so the guest's random pool is ready at once), not -cpu max, whose extra features cost TCG time:
# booted side by side with one on max, a host reached its login prompt in 83 and 85 s against 97 and 99 s (2026-12-07)
HOST_CPU = "qemu64,+ssse3,+sse4.1,+sse4.2,+popcnt,+cx16,+rdrand"
HOST_NIC = "virtio-net-pci.0"  # QEMU's name for the NIC that host_argv's -nic adds
SSH_OPTIONS = ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
               "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=5",
               # kexec can leave a session half-open for minutes: notice a dead peer within ~10 s
               "-o", "ServerAliveInterval=3", "-o", "ServerAliveCountMax=3"]


@dataclass
class LabHost:
    name: str
    port: int
    pmem: str                     # memmap or nvdimm
    home: str
    vms: List[Dict[str, Any]] = field(default_factory=list)
    kernel: str = ""
    boot_id: str = ""

    @property
    def pidfile(self) -> str:
        return os.path.join(self.home, "qemu.pid")


class LabError(RuntimeError):
    pass


def host_argv(image: HostImage, host: LabHost) -> List[str]:
    """The outer QEMU of one lab host: TCG, 2 vCPUs, 2 GiB, SSH forwarded to a loopback port."""
    append = "root=/dev/vda rw console=ttyS0 mitigations=off systemd.hostname=%s" % host.name
    machine, memory, nvdimm = "q35", "2G", []
    if host.pmem == "memmap":
        append += " memmap=%dM!1G" % PMEM_SIZE_MB
    else:
        machine, memory = "q35,nvdimm=on", "2G,slots=2,maxmem=4G"
        nvdimm = ["-object", "memory-backend-file,id=nvmem0,share=on,mem-path=%s/nvdimm.img,size=%dM" % (
                  host.home, PMEM_SIZE_MB), "-device", "nvdimm,id=nvdimm0,memdev=nvmem0"]
    return [qemu_available(), "-name", "lab-" + host.name, "-accel", "tcg", "-machine", machine, "-cpu", HOST_CPU,
            "-smp", "2", "-m", memory, "-nodefaults", "-display", "none",
            "-serial", "file:%s/console.log" % host.home,
            "-kernel", image.kernel, "-initrd", image.initrd, "-append", append,
            "-drive", "file=%s/disk.qcow2,format=qcow2,if=virtio" % host.home,
            "-nic", "user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:%d-:22" % host.port,
            "-qmp", "unix:%s/monitor.qmp,server=on,wait=off" % host.home,
            "-pidfile", host.pidfile, "-daemonize"] + nvdimm


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Lab:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        state = directory / "lab.json"
        self.state: Dict[str, Any] = json.loads(state.read_text()) if state.exists() else {}

    @property
    def key(self) -> str:
        # a copy in the lab dir: inventories (and testinfra, which does not template) name it literally
        return str(self.dir / "ssh" / "id_ed25519")

    def hosts(self) -> List[LabHost]:
        return [LabHost(**entry) for entry in self.state.get("hosts", [])]

    def host(self, name: str) -> LabHost:
        for host in self.hosts():
            if host.name == name:
                return host
        raise LabError("no lab host %s in %s" % (name, self.dir))

    def save(self) -> None:
        (self.dir / "lab.json").write_text(json.dumps(self.state, indent=1) + "\n")

    # -- commands inside a host, over real SSH --------------------------------------------
    def ssh_argv(self, host: LabHost, command: Sequence[str]) -> List[str]:
        # ssh hands the remote side one string; quote every word so nothing is re-parsed
        return ["ssh", "-i", self.key, "-p", str(host.port)] + SSH_OPTIONS + ["root@127.0.0.1", shlex.join(command)]

    def boot_id(self, host: LabHost) -> str:
        return self.run(host, "cat", "/proc/sys/kernel/random/boot_id").strip()

    def run(self, host: LabHost, *command: str, timeout: float = STEP_TIMEOUT, check: bool = True) -> str:
        try:
            result = subprocess.run(self.ssh_argv(host, command), capture_output=True, text=True, timeout=timeout,
                                    check=False)
        except subprocess.TimeoutExpired as exc:
            raise LabError("%s: `%s` did not finish within %d s" % (host.name, shlex.join(command), timeout)) from exc
        if check and result.returncode != 0:
            raise LabError("%s: `%s` failed (%d): %s" % (host.name, shlex.join(command), result.returncode,
                                                         (result.stderr or result.stdout).strip()[-2000:]))
        return result.stdout

    def copy_in(self, host: LabHost, files: Sequence[Path], dest_dir: str) -> None:
        self.run(host, "install", "-d", "-m", "0700", dest_dir)
        subprocess.run(["scp", "-q", "-i", self.key, "-P", str(host.port)] + SSH_OPTIONS
                       + [str(path) for path in files] + ["root@127.0.0.1:%s/" % dest_dir],
                       check=True, timeout=STEP_TIMEOUT)

    def inside(self, host: LabHost, *args: str, timeout: float = STEP_TIMEOUT) -> Any:
        return json.loads(self.run(host, "python3", INSIDE_DIR + "/inside.py", *args, timeout=timeout))

    def wait_ssh(self, host: LabHost, timeout: float = BOOT_TIMEOUT) -> float:
        """Seconds until a real SSH command answers (an open forwarded port proves nothing)."""
        started = time.monotonic()
        while True:
            try:
                # a login to a busy TCG host can take over 30 s: that is a slow answer, not a failure
                result = subprocess.run(self.ssh_argv(host, ["true"]), capture_output=True, timeout=30, check=False)
                if result.returncode == 0:
                    return time.monotonic() - started
            except subprocess.TimeoutExpired:
                pass
            if not _alive(host):
                raise LabError("%s: its QEMU exited; see %s/console.log" % (host.name, host.home))
            if time.monotonic() - started > timeout:
                raise LabError("%s: no SSH within %d s; see %s/console.log" % (host.name, timeout, host.home))
            time.sleep(1)

    # -- life cycle ----------------------------------------------------------------------
    def create(self, hosts: int, vms: int, pmem: Sequence[str], shm: Sequence[str], base_port: int,
               fallback: Sequence[str] = ()) -> Dict[str, Any]:
        image = ensure_image()
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        names = ["hv%d" % index for index in range(1, hosts + 1)]
        self.state = {"image": asdict(image), "fallback": list(fallback), "hosts": [asdict(LabHost(
            name, base_port + index if base_port else free_port(), pmem[index - 1] if index <= len(pmem) else "memmap",
            str(self.dir / name))) for index, name in enumerate(names, 1)]}
        self.save()
        os.makedirs(self.dir / "ssh", mode=0o700, exist_ok=True)
        shutil.copyfile(image.ssh_key, self.key)
        os.chmod(self.key, 0o600)
        started = time.monotonic()
        for host in self.hosts():
            os.makedirs(host.home, mode=0o700, exist_ok=True)
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", image.disk,
                            host.home + "/disk.qcow2"], check=True, timeout=60)
            if host.pmem == "nvdimm":
                with open(host.home + "/nvdimm.img", "wb") as backing:
                    backing.truncate(PMEM_SIZE_MB << 20)
        # one boot at a time: three TCG hosts of 2 vCPUs booting at once on 2 CPUs starve each other, and one of
        # them was seen to hang in its boot with RCU stalls (a vCPU's timer never delivered). Each next host boots
        # while the last one starts its VMs.
        hosts, boot = self.hosts(), {}
        begun = self._power_on_new(image, hosts[0])
        for index, host in enumerate(hosts):
            boot[host.name] = round(self._await_first_boot(image, host, begun), 1)
            if index + 1 < len(hosts):
                begun = self._power_on_new(image, hosts[index + 1])
            self.copy_in(host, INSIDE_FILES, INSIDE_DIR)
            self.inside(host, "pmem")
            host.kernel = self.run(host, "uname", "-r").strip()
            host.boot_id = self.boot_id(host)
            host.vms = self.inside(host, "start", "--host", host.name, "--vms", str(vms),
                                   *[arg for name in shm for arg in ("--shm", name)])
        self.state["hosts"] = [asdict(host) for host in hosts]
        self.state["boot_seconds"] = boot
        self.state["created_seconds"] = round(time.monotonic() - started, 1)
        self.save()
        (self.dir / "inventory.yml").write_text(inventory_text(
            [(host.name, host.port) for host in self.hosts()], self.key, self.state.get("fallback", [])))
        return self.state

    @staticmethod
    def _power_on_new(image: HostImage, host: LabHost) -> float:
        subprocess.run(host_argv(image, host), check=True, timeout=60)
        return time.monotonic()

    def _await_first_boot(self, image: HostImage, host: LabHost, begun: float, attempts: int = 2) -> float:
        """Seconds from a new host's power-on to SSH. A boot that hangs is powered off and tried once more: the lab's
        own flake, not the collection's (its console log is kept as console.log.hung)."""
        for attempt in range(1, attempts + 1):
            try:
                self.wait_ssh(host, timeout=FIRST_BOOT_TIMEOUT - (time.monotonic() - begun))
                return time.monotonic() - begun
            except LabError:
                if attempt == attempts:
                    raise
                self.power_off(host)
                os.replace(host.home + "/console.log", host.home + "/console.log.hung")
                print("lab: %s hung in its boot; powered off, booting it again" % host.name, file=sys.stderr)
                begun = self._power_on_new(image, host)
        raise AssertionError("unreachable")

    def probe(self) -> Dict[str, Any]:
        found = {}
        for host in self.hosts():
            found[host.name] = {
                "kernel": self.run(host, "uname", "-r").strip(),
                "boot_id": self.boot_id(host),
                "guests": self.inside(host, "probe"),
            }
        return found

    def power_off(self, host: LabHost) -> bool:
        """Pull the plug: SIGKILL the host's QEMU. False when it was not running."""
        killed = _signal(host, signal.SIGKILL)
        deadline = time.monotonic() + STEP_TIMEOUT
        while killed and _alive(host) and time.monotonic() < deadline:
            time.sleep(0.1)
        return killed

    def set_link(self, host: LabHost, up: bool) -> None:
        """Plug or pull the host's network cable (QMP set_link on its NIC): a partition, not a closed connection.
        Open SSH sessions hang until their ServerAlive* checks give up, as across a real network fault."""
        from qemu.qmp.legacy import QEMUMonitorProtocol  # the controller's venv has it; the lab's other steps need not

        monitor = QEMUMonitorProtocol(host.home + "/monitor.qmp")
        monitor.connect()
        try:
            answer = monitor.cmd("set_link", name=HOST_NIC, up=up)
        finally:
            monitor.close()
        if "error" in answer:
            raise LabError("%s: set_link %s failed: %s" % (host.name, HOST_NIC, answer["error"]))

    def power_on(self, host: LabHost) -> float:
        """A cold boot from the host's disk and its image's kernel, as a BMC's power-on; seconds to SSH."""
        if _alive(host):
            raise LabError("%s is already on" % host.name)
        subprocess.run(host_argv(HostImage(**self.state["image"]), host), check=True, timeout=60)
        return self.wait_ssh(host)

    def destroy(self) -> None:
        for host in self.hosts():
            _signal(host, signal.SIGKILL)
        kill_all(self.dir)
        shutil.rmtree(self.dir, ignore_errors=True)


def _signal(host: LabHost, signum: int) -> bool:
    """Signal the host's QEMU by its pidfile; False when it has none or is gone."""
    try:
        os.kill(int(Path(host.pidfile).read_text()), signum)
        return True
    except (OSError, ValueError):
        return False


def _alive(host: LabHost) -> bool:
    """Its QEMU runs: not gone, and not a zombie that no init has reaped yet. A killed QEMU's main thread shows Z
    while its other threads still exit, holding its files: a new QEMU on its pidfile then fails to lock it."""
    try:
        pid = int(Path(host.pidfile).read_text())
        stat = Path("/proc/%d/stat" % pid).read_text()
        threads = os.listdir("/proc/%d/task" % pid)
    except (OSError, ValueError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z" or len(threads) > 1


def inventory(hosts: Sequence[Tuple[str, int]], key: str, fallback: Sequence[str] = ()) -> Dict[str, Any]:
    """The lab as the collection's users write an inventory: SSH hosts in group hypervisors.

    Hosts named in `fallback` go to their own group, lab_fallback, for the scenarios that must fail."""
    def group(members: Sequence[Tuple[str, int]]) -> Dict[str, Any]:
        return {"hosts": {name: {"ansible_host": "127.0.0.1", "ansible_port": port} for name, port in members}}

    children = {"hypervisors": group([host for host in hosts if host[0] not in fallback])}
    if fallback:
        children["lab_fallback"] = group([host for host in hosts if host[0] in fallback])
    return {"all": {"children": children, "vars": {
        "ansible_user": "root",
        "ansible_ssh_private_key_file": key,
        "ansible_ssh_common_args": "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR",
        "ansible_python_interpreter": "/usr/bin/python3",
        "liveupdate_qmp_dir": QMP_DIR_INSIDE,
        "liveupdate_reboot_method": "kexec",
        # the image's newer kernel and QEMU wait in its trixie-backports, as on a real trixie host
        "liveupdate_kernel_target_release": BACKPORTS_SUITE,
        "liveupdate_qemu_target_release": BACKPORTS_SUITE,
    }}}


def inventory_text(hosts: Sequence[Tuple[str, int]], key: str, fallback: Sequence[str] = ()) -> str:
    return "---\n# Written by `python -m lab.host.fleet`.\n" + yaml.dump(
        inventory(hosts, key, fallback), Dumper=IndentedDumper, sort_keys=False, width=200)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["create", "probe", "ssh", "power-off", "power-on", "destroy", "inventory"])
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--hosts", type=int, default=2)
    parser.add_argument("--vms", type=int, default=2)
    parser.add_argument("--pmem", action="append", default=[], choices=["memmap", "nvdimm"],
                        help="per host, in order (default memmap)")
    parser.add_argument("--shm", action="append", default=[], help="a nested VM whose RAM goes on tmpfs")
    parser.add_argument("--base-port", type=int, default=0, help="SSH port of hv1 minus one (default: free ports)")
    parser.add_argument("--fallback", action="append", default=[], help="a host for group lab_fallback")
    parser.add_argument("--key", default="", help="for inventory: the key path as the inventory should name it")
    parser.add_argument("command", nargs="*", help="for ssh: HOST [-- COMMAND...]; for power-off and power-on: HOST")
    words = list(sys.argv[1:] if argv is None else argv)
    # after `--` comes the remote command, whose own options argparse must not read
    remote = words[words.index("--") + 1:] if "--" in words else []
    args = parser.parse_intermixed_args(words[:words.index("--")] if "--" in words else words)
    args.command += remote
    lab = Lab(args.dir)
    if args.action == "create":
        lab.destroy()
        lab = Lab(args.dir)
        try:
            print(json.dumps(lab.create(args.hosts, args.vms, args.pmem, args.shm, args.base_port, args.fallback),
                             indent=1))
        except BaseException:
            lab.destroy()
            raise
    elif args.action == "inventory":
        sys.stdout.write(inventory_text([("hv%d" % i, args.base_port + i) for i in range(1, args.hosts + 1)],
                                        args.key, args.fallback))
    elif args.action == "probe":
        print(json.dumps(lab.probe(), indent=1))
    elif args.action == "ssh":
        sys.stdout.write(lab.run(lab.host(args.command[0]), *args.command[1:]))
    elif args.action == "power-off":
        print(json.dumps({"host": args.command[0], "powered_off": lab.power_off(lab.host(args.command[0]))}))
    elif args.action == "power-on":
        print(json.dumps({"host": args.command[0], "ssh_seconds": round(lab.power_on(lab.host(args.command[0])), 1)}))
    else:
        lab.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
