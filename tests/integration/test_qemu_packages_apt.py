"""QEMU's packages as this machine's own dpkg and apt report them (read-only: apt-get --simulate), and the plan's
refusal, through ansible, of a target release apt does not have."""

from __future__ import annotations

from pathlib import Path

from ansible_run import run_module

from ansible_collections.liveupdate.cpr.plugins.module_utils import qemu_packages as qp


def test_the_installed_qemu_packages_are_found_and_apt_is_asked_about_exactly_those():
    upgrade = qp.plan_apt()

    assert "qemu-system-x86" in upgrade.installed, upgrade  # make setup installs it
    assert upgrade.problem is None, upgrade.problem
    assert not upgrade.newer or upgrade.version_after() != upgrade.version_before()
    # the version the plan shows is the one QEMU reports over QMP (query-version), e.g. 10.0.2
    assert upgrade.version_before().count(".") == 2 and ":" not in upgrade.version_before()
    assert upgrade.line().startswith("QEMU %s" % upgrade.version_before())


def test_a_target_release_apt_does_not_have_refuses_the_host_in_its_plan(tmp_path: Path):
    qmp_dir = tmp_path / "qmp"
    qmp_dir.mkdir()

    run = run_module("host_plan", {"qmp_dir": str(qmp_dir), "state_dir": str(tmp_path / "state"),
                                   "update_kernel": False, "update_qemu": True, "reboot_method": "none",
                                   "qemu_target_release": "liveupdate-no-such-release"})

    assert run.rc != 0
    message = run.result["msg"]
    assert "QEMU's packages (" in message and "cannot be updated from liveupdate-no-such-release" in message, message
    assert "liveupdate-no-such-release" in message.split(": ", 3)[-1] and "is invalid" in message, message


def test_the_plan_finds_this_machines_apt_lists_fresh_and_leaves_them(tmp_path: Path):
    qmp_dir = tmp_path / "qmp"
    qmp_dir.mkdir()
    lists = Path("/var/lib/apt/lists")
    before = lists.stat().st_mtime

    run = run_module("host_plan", {"qmp_dir": str(qmp_dir), "state_dir": str(tmp_path / "state"),
                                   "update_kernel": False, "reboot_method": "none",
                                   "refresh_package_lists": True, "package_cache_valid_time": 10 ** 9})

    assert run.rc == 0, run.result
    assert run.result["package_lists"]["refreshed"] is False
    assert run.result["package_lists"]["age_seconds"] >= 0
    assert lists.stat().st_mtime == before
