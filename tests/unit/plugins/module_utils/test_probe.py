"""The cross-version probe's argv: the VM's configuration, with nothing of the running VM's that only one process
may hold. The probe of real QEMU binaries is in tests/integration/test_cross_version.py."""

from __future__ import annotations

import json

from ansible_collections.liveupdate.cpr.plugins.module_utils import qemu_argv as qa
from ansible_collections.liveupdate.cpr.plugins.module_utils.probe import probe_argv

PRIVATE = "/run/probe.x"
LIBVIRT_DISK = json.dumps({"driver": "file", "filename": "/var/lib/libvirt/images/db1.qcow2", "node-name": "storage1"})
LIBVIRT_FORMAT = json.dumps({"driver": "qcow2", "file": "storage1", "node-name": "format1"})


def probed(*options):
    """(argv, left_out, why not probed) of a VM with these options."""
    return probe_argv(["/usr/bin/qemu-system-x86_64"] + list(options), "pc-q35-10.0", PRIVATE, "db1-cpr-probe")


def rewritten(*options):
    return probed(*options)[0]


def option_values(argv, name):
    return qa.values_of(argv, name)


def test_the_vms_own_endpoints_and_files_are_not_in_the_probe():
    argv = rewritten(
        "-name", "guest=db1,debug-threads=on", "-machine", "q35", "-daemonize", "-pidfile", "/run/db1.pid",
        "-qmp", "unix:/run/qemu/db1.qmp,server=on,wait=off", "-monitor", "unix:/run/qemu/db1.hmp,server=on",
        "-vnc", ":1", "-serial", "unix:/run/qemu/db1.serial,server=on", "-D", "/var/log/db1.log",
        "-incoming", "file:/var/lib/x/db1.state")
    text = " ".join(argv)
    for own in ("/run/qemu/", "/run/db1.pid", "/var/log/db1.log", ":1", "-daemonize", "db1.state"):
        assert own not in text, own
    assert option_values(argv, "qmp") == ["unix:%s/probe.qmp,server=on,wait=off" % PRIVATE]
    assert option_values(argv, "serial") == ["null"]
    assert option_values(argv, "name") == ["db1-cpr-probe,debug-threads=on"], "not a second VM named db1"
    assert argv[-7:-2] == ["-display", "none", "-S", "-incoming", "defer"]


def test_the_machine_type_is_pinned_to_the_one_the_vm_runs():
    argv = rewritten("-machine", "q35,memory-backend=ram0", "-m", "4G")
    assert option_values(argv, "machine") == ["pc-q35-10.0,memory-backend=ram0"]


def test_disks_become_null_co_nodes_with_the_same_names_and_firmware_is_read_unlocked():
    argv = rewritten(
        "-blockdev", LIBVIRT_DISK, "-blockdev", LIBVIRT_FORMAT,
        "-blockdev", "driver=file,filename=/srv/vm/data.raw,node-name=data0",
        "-drive", "file=/srv/vm/root.qcow2,format=qcow2,if=virtio,id=root,cache=none,aio=native",
        "-drive", "if=pflash,format=raw,unit=1,file=/var/lib/vm/db1_VARS.fd",
        "-cdrom", "/srv/iso/install.iso")
    blockdevs = [json.loads(value) for value in option_values(argv, "blockdev")]
    assert blockdevs == [{"driver": "null-co", "read-zeroes": True, "node-name": name}
                         for name in ("storage1", "format1", "data0")]
    drives = option_values(argv, "drive")
    assert drives[0] == "if=virtio,id=root,driver=null-co,read-zeroes=on"
    assert drives[1] == "if=pflash,format=raw,unit=1,file=/var/lib/vm/db1_VARS.fd,readonly=on,file.locking=off"
    assert drives[2] == "if=ide,index=2,media=cdrom,driver=null-co,read-zeroes=on"
    assert "/srv/" not in " ".join(argv)


def test_nic_backends_become_hub_ports_and_sockets_private():
    argv, left_out, _unprobeable = probed(
        "-netdev", "tap,id=net0,ifname=vnet3,script=no,downscript=no,vhost=on",
        "-netdev", json.dumps({"type": "tap", "fd": "23", "id": "hostnet1"}),
        "-device", "virtio-net-pci,netdev=net0,mac=52:54:00:12:34:56",
        "-nic", "user,model=e1000",
        "-chardev", "socket,id=qga0,path=/run/qemu/db1.qga,server=on,wait=off",
        "-chardev", "pty,id=charserial0")
    assert option_values(argv, "netdev") == ["hubport,id=net0,hubid=0", "hubport,id=hostnet1,hubid=0"]
    assert "virtio-net-pci,netdev=net0,mac=52:54:00:12:34:56" in option_values(argv, "device")
    assert option_values(argv, "chardev") == [
        "socket,id=qga0,path=%s/chr-qga0.sock,server=on,wait=off" % PRIVATE, "null,id=charserial0"]
    assert left_out == ["-nic user"]


def test_ram_goes_to_a_private_sparse_file_and_is_never_preallocated_or_locked():
    argv = rewritten(
        "-object", "memory-backend-file,id=ram0,size=16G,mem-path=/dev/dax0.0,share=on,align=2M,offset=4G,pmem=on,prealloc=on",
        "-object", json.dumps({"qom-type": "memory-backend-memfd", "id": "ram1", "size": 1 << 30, "hugetlb": True}),
        "-overcommit", "mem-lock=on", "-realtime", "mlock=on", "-mem-prealloc")
    objects = option_values(argv, "object")
    assert objects[0] == "memory-backend-file,id=ram0,size=16G,mem-path=%s,share=on,align=2M" % PRIVATE
    assert json.loads(objects[1]) == {"qom-type": "memory-backend-memfd", "id": "ram1", "size": 1 << 30}
    assert option_values(argv, "overcommit") == ["cpu-pm=off"]
    assert "-realtime" not in argv and "-mem-prealloc" not in argv and "/dev/dax0.0" not in " ".join(argv)


def test_devices_holding_what_only_one_process_may_hold_are_left_out_and_said_so():
    argv, left_out, unprobeable = probed(
        "-device", "vfio-pci,host=0000:3b:00.0,id=hostdev0", "-device", "vhost-vsock-pci,guest-cid=3",
        "-tpmdev", "emulator,id=tpm0,chardev=chrtpm", "-device", "tpm-crb,tpmdev=tpm0",
        "-object", "input-linux,id=kbd1,evdev=/dev/input/event2", "-device", "virtio-balloon-pci")
    assert left_out == ["-device vfio-pci", "-device vhost-vsock-pci", "-tpmdev emulator", "-device tpm-crb",
                        "-object input-linux"]
    assert option_values(argv, "device") == ["virtio-balloon-pci"] and unprobeable is None


def test_a_configuration_file_the_rewrite_cannot_see_into_is_not_probed():
    unprobeable = probed("-readconfig", "/etc/qemu/db1.cfg")[2]
    assert unprobeable == "-readconfig hides part of its configuration from the probe"
