"""A local fleet lab: N hypervisor "hosts" on this machine, each with real QEMU VMs.

Each host is a directory with its own QMP dir, state dir, venv and copy of the
QEMU binary (build 1). A newer "package" (build 2) waits in the lab's package
dir; the rollout installs it through liveupdate_qemu_update_command. The hosts
are presented as an inventory with ansible_connection=local.

    python -m lab.local_fleet create --dir /tmp/lu-fleet --hosts 6 --vms 2
    python -m lab.local_fleet create --dir /tmp/lu-fleet --hosts 2 --vms 1 --guest linux   # real Debian guests
    python -m lab.local_fleet probe --dir /tmp/lu-fleet
    python -m lab.local_fleet destroy --dir /tmp/lu-fleet
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import socket
import struct
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, List

import yaml

from lab.linux_guest import LinuxGuestImage, LinuxVm, ensure_image
from lab.testvm import LAB_GUEST_HZ, TestVm, guest_disk, kill_all, probe, qemu_available

ROOT = Path(__file__).resolve().parent.parent
BUILD_MARK = b"\0liveupdate-lab-build-%d\0"


def _build(source: str, dest: Path, build: int) -> None:
    """A copy of QEMU that differs from others by trailing bytes (ignored by the ELF loader)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(Path(source).read_bytes() + BUILD_MARK % build)
    dest.chmod(0o755)


GUESTS = ("bootsector", "linux")


def create(lab: Path, hosts: int, vms: int, guest: str = "bootsector") -> Dict[str, Any]:
    """guest: "bootsector" (the 512-byte RAM-pattern guest) or "linux" (lab.linux_guest: Debian with its agent)."""
    qemu = qemu_available()
    lab.mkdir(parents=True, exist_ok=True)
    package = lab / "packages" / "qemu-system-x86_64"
    _build(qemu, package, 2)
    machines: List[Dict[str, Any]] = []
    linux: List[LinuxVm] = []
    image = ensure_image() if guest == "linux" else None
    disk = guest_disk(ROOT / "build" / "cache", hz=LAB_GUEST_HZ) if guest == "bootsector" else None
    for h in range(1, hosts + 1):
        name = "hv%d" % h
        home = lab / name
        binary = home / "bin" / "qemu-system-x86_64"
        _build(qemu, binary, 1)
        for v in range(1, vms + 1):
            vm_name = "%s-vm%d" % (name, v)
            if image is not None:
                linux.append(LinuxVm(vm_name, home / "qmp", image, binary=str(binary)).start())
                machines.append({"host": name, "vm": vm_name, "qmp_dir": str(home / "qmp"), "guest": "linux",
                                 "ssh_port": linux[-1].ssh_port})
                continue
            assert disk is not None
            vm = TestVm(vm_name, home / "qmp", disk, binary=str(binary)).start()
            state = vm.wait_booted()
            machines.append({"host": name, "vm": vm.name, "qmp_dir": str(vm.qmp_dir), "nonce": state.nonce,
                             "counter": state.counter})
    with ThreadPoolExecutor(max(1, len(linux))) as pool:  # the real guests boot side by side
        for entry, facts in zip([m for m in machines if m.get("guest") == "linux"],
                                pool.map(lambda vm: (vm.wait_booted(), vm.facts())[1], linux)):
            entry.update(boot_id=facts["boot_id"])
    (lab / "inventory.yml").write_text(inventory_text(str(lab), hosts))
    fleet = {"lab": str(lab), "hosts": hosts, "guest": guest, "vms": machines}
    if image is not None:
        fleet["image"] = asdict(image)
    (lab / "fleet.json").write_text(json.dumps(fleet, indent=1) + "\n")
    return fleet


def inventory(lab_dir: str, hosts: int, root: str = str(ROOT)) -> Dict[str, Any]:
    """The lab as an inventory: every path follows from the lab dir and the host's name."""
    home = "%s/{{ inventory_hostname }}" % lab_dir
    return {"all": {"children": {"hypervisors": {"hosts": {"hv%d" % h: {} for h in range(1, hosts + 1)}, "vars": {
        "ansible_connection": "local",
        "ansible_python_interpreter": "{{ ansible_playbook_python }}",
        "liveupdate_qmp_dir": home + "/qmp",
        "liveupdate_state_dir": home + "/state",
        "liveupdate_venv": home + "/venv",
        "liveupdate_reboot_method": "none",
        "liveupdate_update_kernel": False,
        "liveupdate_update_qemu": True,
        "liveupdate_prepare_packages": False,
        # the hosts share this machine and never reboot: no boot unit of theirs belongs in its systemd
        "liveupdate_restore_at_boot": False,
        # the lab's "package update", through the variable an operator would use for a custom build
        "liveupdate_qemu_update_command": ["{{ ansible_playbook_python }}", root + "/lab/update_qemu.py",
                                           "%s/packages/qemu-system-x86_64" % lab_dir, home + "/bin/qemu-system-x86_64"],
    }}}}}


class IndentedDumper(yaml.SafeDumper):
    """Indent list items under their key, as yamllint expects."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


def inventory_text(lab_dir: str, hosts: int, root: str = str(ROOT)) -> str:
    body = yaml.dump(inventory(lab_dir, hosts, root), Dumper=IndentedDumper, sort_keys=False, width=200)
    return "---\n# Written by `python -m lab.local_fleet`.\n" + body


def probe_all(lab: Path) -> List[Dict[str, Any]]:
    fleet = json.loads((lab / "fleet.json").read_text())
    found = []
    for machine in fleet["vms"]:
        now: Dict[str, Any]
        if machine.get("guest") == "linux":
            vm: Any = LinuxVm(machine["vm"], Path(machine["qmp_dir"]), LinuxGuestImage(**fleet["image"]),
                              ssh_port=machine["ssh_port"])
            now = dict(vm.facts(), clock_offset=vm.clock_offset())
        else:
            vm = TestVm(machine["vm"], Path(machine["qmp_dir"]), Path("/dev/null"))
            now = asdict(probe(vm))
        pid = qmp_server_pid(vm.qmp_path)
        exe = "/proc/%d/exe" % pid
        found.append(dict(machine, now=now, pid=pid, exe=os.readlink(exe),
                          exe_sha256=hashlib.sha256(Path(exe).read_bytes()).hexdigest()))
    return found


def qmp_server_pid(path: Path) -> int:
    """The pid of the QEMU serving a QMP socket (SO_PEERCRED)."""
    with socket.socket(socket.AF_UNIX) as client:
        client.connect(str(path))
        return int(struct.unpack("3i", client.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[0])


def destroy(lab: Path) -> None:
    kill_all(lab)
    fleet = json.loads((lab / "fleet.json").read_text()) if (lab / "fleet.json").exists() else {}
    for machine in fleet.get("vms", []):
        if machine.get("guest") == "linux":
            ram = Path(LinuxVm(machine["vm"], Path(machine["qmp_dir"]), LinuxGuestImage(**fleet["image"])).ram_path)
            ram.unlink(missing_ok=True)
    shutil.rmtree(lab, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["create", "probe", "destroy", "inventory"])
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--root", default=str(ROOT), help="repository path, for `inventory`")
    parser.add_argument("--hosts", type=int, default=6)
    parser.add_argument("--vms", type=int, default=2)
    parser.add_argument("--guest", choices=GUESTS, default="bootsector",
                        help="the VMs' guest: the boot-sector RAM-pattern guest, or a real Debian guest with its agent")
    args = parser.parse_args()
    if args.action == "create":
        destroy(args.dir)
        print(json.dumps(create(args.dir, args.hosts, args.vms, args.guest), indent=1))
    elif args.action == "inventory":
        sys.stdout.write(inventory_text(str(args.dir), args.hosts, args.root))
    elif args.action == "probe":
        print(json.dumps(probe_all(args.dir), indent=1))
    else:
        destroy(args.dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
