"""Kernel facts: flavours, version order and the kexec command line."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from ansible_collections.liveupdate.cpr.plugins.module_utils import host_plan, kernel


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


def _facts_on(monkeypatch, running, installed, offered):
    """kernel_facts on a host that runs `running`, has `installed` and whose package manager offers `offered`."""
    monkeypatch.setattr(kernel.os, "uname", lambda: SimpleNamespace(release=running))
    monkeypatch.setattr(kernel, "family", lambda: "debian")
    monkeypatch.setattr(kernel, "installed_kernels", lambda: sorted(installed, key=kernel.version_key))
    monkeypatch.setattr(kernel, "_run", lambda argv: "\n".join("linux-image-" + v for v in offered))
    return kernel.kernel_facts(kernel.KernelOptions())


@pytest.mark.parametrize(("running", "installed", "offered", "target"), [
    # Debian: an -rt and a -cloud kernel of the same or a newer version sit beside the running -amd64 one
    ("6.1.0-28-amd64", ["6.1.0-28-amd64", "6.12.38+deb12-rt-amd64", "6.12.38+deb12-cloud-amd64"],
     ["6.1.0-28-amd64", "6.12.38+deb12-rt-amd64"], "6.1.0-28-amd64"),
    ("6.1.0-28-amd64", ["6.1.0-28-amd64", "6.12.38+deb12-cloud-amd64"], ["6.12.30+deb12-amd64"], "6.12.30+deb12-amd64"),
    ("6.1.0-28-cloud-amd64", ["6.1.0-28-cloud-amd64", "6.12.38+deb12-amd64"], [], "6.1.0-28-cloud-amd64"),
    # Ubuntu: -generic and -lowlatency
    ("5.15.0-91-generic", ["5.15.0-91-generic", "5.15.0-100-lowlatency"], ["5.15.0-97-generic", "5.15.0-100-lowlatency"],
     "5.15.0-97-generic"),
    ("5.15.0-91-lowlatency", ["5.15.0-91-lowlatency", "5.15.0-100-generic"], [], "5.15.0-91-lowlatency"),
])
def test_target_kernel_keeps_the_running_flavour(monkeypatch, running, installed, offered, target):
    facts = _facts_on(monkeypatch, running, installed, offered)
    assert facts["target"] == target
    assert kernel.flavour_of(facts["target"]) == kernel.flavour_of(running)
    assert facts["needed"] == (target != running)


def test_the_package_manager_is_not_asked_when_no_kernel_will_be_installed(monkeypatch):
    monkeypatch.setattr(kernel.os, "uname", lambda: SimpleNamespace(release="6.1.0-28-amd64"))
    monkeypatch.setattr(kernel, "family", lambda: "debian")
    monkeypatch.setattr(kernel, "installed_kernels", lambda: ["6.1.0-28-amd64", "6.1.0-30-amd64"])
    monkeypatch.setattr(kernel, "_run", lambda argv: pytest.fail("asked %s" % argv))
    facts = kernel.kernel_facts(kernel.KernelOptions(offered=False))
    assert facts["available"] == [] and facts["target"] == "6.1.0-30-amd64", "an installed kernel is still a target"


@pytest.mark.parametrize(("requested", "usable", "fallback", "gets"), [
    ("kexec", True, False, "kexec"), ("kexec", True, True, "kexec"),
    ("kexec", False, True, "reboot"), ("kexec", False, False, "refused"),
    ("reboot", False, False, "reboot"), ("reboot", True, False, "reboot"), ("none", False, False, "none"),
])
def test_the_reboot_a_host_gets_is_one_rule_for_the_plan_and_the_kexec_role(
        monkeypatch, requested, usable, fallback, gets):
    assert kernel.effective_reboot(requested, usable, fallback) == gets
    situation = host_plan.Situation(reboot_method=requested, kexec_usable=usable, fallback=fallback)
    assert host_plan.reboot_for(situation) == gets, "the plan"
    monkeypatch.setattr(kernel, "kexec_support", lambda: {"usable": usable, "binary": None, "loaded": False,
                                                          "reasons": [] if usable else ["no kexec here"]})
    monkeypatch.setattr(kernel, "_run", lambda argv: "")
    facts = kernel.kernel_facts(kernel.KernelOptions(offered=False, reboot_method=requested,
                                                     fallback_to_reboot=fallback))
    assert facts["reboot"] == gets, "kernel_info, which the kexec role's load reads"
