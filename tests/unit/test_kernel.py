"""Kernel facts: flavours, version order and the kexec command line."""

from __future__ import annotations

from ansible_collections.liveupdate.cpr.plugins.module_utils import kernel


def test_debian_flavours():
    assert kernel.flavour_of("6.1.0-28-amd64") == "amd64"
    assert kernel.flavour_of("6.12.38+deb12-cloud-amd64") == "cloud-amd64"
    assert kernel.flavour_of("6.1.0-28-cloud-amd64") == "cloud-amd64"
    assert kernel.flavour_of("5.14.0-427.el9.x86_64") == ""


def test_version_order():
    versions = ["6.12.38+deb12-amd64", "6.1.0-28-amd64", "6.1.0-9-amd64", "6.12.9+deb12-amd64"]
    assert sorted(versions, key=kernel.version_key) == [
        "6.1.0-9-amd64", "6.1.0-28-amd64", "6.12.9+deb12-amd64", "6.12.38+deb12-amd64"]


def test_kexec_cmdline_drops_boot_image_and_applies_overrides_before_init_args():
    current = "BOOT_IMAGE=/vmlinuz-6.1 root=/dev/vda rw quiet memmap=256M!1G -- single"
    line = kernel.kexec_cmdline(current, {"quiet": None, "mitigations": "off", "nokaslr": ""})
    assert line == "root=/dev/vda rw memmap=256M!1G mitigations=off nokaslr -- single"
