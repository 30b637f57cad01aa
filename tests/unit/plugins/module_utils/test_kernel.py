"""Kernel facts: flavours, version order and the kexec command line."""

from __future__ import annotations

import os
import time
from types import SimpleNamespace

import pytest

from ansible_collections.liveupdate.cpr.plugins.module_utils import host_plan, kernel
from ansible_collections.liveupdate.cpr.plugins.module_utils.errors import NotReadyError


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


# The plan's refresh of the package lists, through a stand-in apt-get on PATH that logs its calls and fails as told
FAKE_APT = """#!/bin/sh
echo "$*" >>"$0.calls"
n=$(wc -l <"$0.calls")
if [ "$n" -le "${FAIL_TIMES:-0}" ]; then echo "$FAIL_WITH" >&2; exit 100; fi
exit 0
"""


@pytest.fixture
def fake_apt(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    apt_get = bin_dir / "apt-get"
    apt_get.write_text(FAKE_APT)
    apt_get.chmod(0o755)
    monkeypatch.setenv("PATH", "%s:%s" % (bin_dir, os.environ["PATH"]))
    monkeypatch.setattr(kernel, "family", lambda: "debian")
    monkeypatch.setattr(kernel.time, "sleep", lambda seconds: None)
    stamp = tmp_path / "update-success-stamp"
    stamp.write_text("")
    monkeypatch.setattr(kernel, "APT_UPDATE_STAMP", str(stamp))
    monkeypatch.setattr(kernel, "APT_LISTS", str(tmp_path / "no-lists"))
    return SimpleNamespace(stamp=stamp, calls=lambda: (bin_dir / "apt-get.calls").read_text().splitlines()
                           if (bin_dir / "apt-get.calls").exists() else [])


def test_fresh_lists_are_not_refreshed_and_stale_ones_are(fake_apt):
    assert kernel.refresh_package_lists(3600)["refreshed"] is False
    assert fake_apt.calls() == []
    os.utime(fake_apt.stamp, (0, time.time() - 7200))
    assert kernel.refresh_package_lists(3600) == {"refreshed": True, "age_seconds": 0}
    assert fake_apt.calls() == ["update -q"]


def test_another_apts_lock_is_waited_for(fake_apt, monkeypatch):
    monkeypatch.setenv("FAIL_TIMES", "2")
    monkeypatch.setenv("FAIL_WITH", "E: Could not get lock /var/lib/apt/lists/lock. It is held by process 42 (apt-get)")
    assert kernel.refresh_package_lists(0)["refreshed"] is True
    assert len(fake_apt.calls()) == 3


def test_a_refresh_that_keeps_failing_stops_the_plan_naming_the_command_and_its_error(fake_apt, monkeypatch):
    monkeypatch.setenv("FAIL_TIMES", "9")
    monkeypatch.setenv("FAIL_WITH", "E: Failed to fetch http://mirror.example/dists/trixie/InRelease")
    with pytest.raises(NotReadyError) as failed:
        kernel.refresh_package_lists(0)
    assert len(fake_apt.calls()) == 3
    assert "`apt-get update -q` failed (exit 100): E: Failed to fetch http://mirror.example" in failed.value.message
    assert "liveupdate_refresh_package_lists=false" in failed.value.fix
