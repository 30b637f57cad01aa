"""The RAM persistence verdict: what survives kexec, a firmware reboot, or only a QEMU restart."""

from __future__ import annotations

from ansible_collections.liveupdate.cpr.plugins.module_utils import ram_verdict as rv
from ansible_collections.liveupdate.cpr.plugins.module_utils.qemu_argv import RamBackend

MOUNTS = [rv.Mount("/", "/dev/vda1", "ext4", ("rw",)), rv.Mount("/dev/shm", "tmpfs", "tmpfs", ("rw",)),
          rv.Mount("/mnt/pmem", "/dev/pmem0", "ext4", ("rw", "dax=always")),
          rv.Mount("/dev/hugepages", "hugetlbfs", "hugetlbfs", ("rw",))]


def shared(path, size=64 << 20, offset=0, backend_id="ram0"):
    return RamBackend(backend_id, "memory-backend-file", size, path, True, offset)


def verdict(backends, method, policy="fail", persistent=()):
    return rv.judge("vm", backends, method, policy, persistent, MOUNTS)


def test_devdax_survives_kexec_but_memmap_pmem_not_a_firmware_reboot():
    assert verdict([shared("/dev/dax0.0")], "kexec").ok
    reboot = verdict([shared("/dev/dax0.0")], "reboot")
    assert not reboot.ok and "firmware reboot" in reboot.reasons[0]


def test_dax_mounted_filesystem_survives_kexec():
    assert verdict([shared("/mnt/pmem/vm.ram")], "kexec").ok


def test_tmpfs_and_hugetlbfs_are_lost_across_a_reboot_but_fine_without_one():
    for path in ("/dev/shm/vm.ram", "/dev/hugepages/vm.ram"):
        lost = verdict([shared(path)], "kexec")
        assert not lost.ok and "does not survive a kexec" in lost.reasons[0]
        assert verdict([shared(path)], "none").ok


def test_declared_persistent_path():
    assert verdict([shared("/srv/ram/vm.ram")], "reboot", persistent=["/srv/ram"]).ok


def test_anonymous_and_memfd_need_save_ram_even_without_reboot():
    for backend in (RamBackend("pc.ram", "memory-backend-ram", 1 << 30),
                    RamBackend("m", "memory-backend-memfd", 1 << 30, share=True),
                    RamBackend("p", "memory-backend-file", 1 << 30, "/dev/shm/x", share=False)):
        refused = verdict([backend], "none")
        assert not refused.ok and refused.mode == rv.MODE_IGNORE_SHARED
        accepted = verdict([backend], "none", policy="save_ram")
        assert accepted.ok and accepted.mode == rv.MODE_SAVE_RAM and not accepted.x_ignore_shared


def test_one_lost_backend_sends_the_whole_vm_to_the_policy():
    mixed = [shared("/dev/dax0.0"), RamBackend("extra", "memory-backend-ram", 1 << 20)]
    assert not verdict(mixed, "kexec").ok
    assert verdict(mixed, "kexec", policy="save_ram").mode == rv.MODE_SAVE_RAM


def test_overlapping_ranges_on_one_device():
    vms = {"a": [shared("/dev/dax0.0", size=64 << 20, offset=0)],
           "b": [shared("/dev/dax0.0", size=64 << 20, offset=64 << 20)],
           "c": [shared("/dev/dax0.0", size=64 << 20, offset=96 << 20)]}
    problems = rv.overlapping_ranges(vms)
    assert len(problems) == 1 and "b:ram0 and c:ram0" in problems[0]
    assert rv.overlapping_ranges({k: v for k, v in vms.items() if k != "c"}) == []
    spanning = {"big": [shared("/dev/dax0.0", size=256 << 20)], "x": [shared("/dev/dax0.0", offset=64 << 20)],
                "y": [shared("/dev/dax0.0", offset=160 << 20)], "other": [shared("/dev/dax1.0")]}
    assert len(rv.overlapping_ranges(spanning)) == 2
