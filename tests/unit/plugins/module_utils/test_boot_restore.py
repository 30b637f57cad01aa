"""The boot unit's entry point: it restores only the planned boot's saves of its own version, once their host
resources exist, through the same restore_host as vm_restore; and its unit is ordered early and on nothing late."""

from __future__ import annotations

import configparser
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from ansible_collections.liveupdate.cpr.plugins.module_utils import (
    boot_restore,
    boot_token,
    guest_agent,
    launcher,
    qemu_argv,
    restore,
)
from ansible_collections.liveupdate.cpr.plugins.module_utils import journal as jr
from ansible_collections.liveupdate.cpr.plugins.module_utils.errors import RestoreError
from ansible_collections.liveupdate.cpr.plugins.module_utils.version import COLLECTION_VERSION

OLD_BOOT, NEW_BOOT = "boot-before", "boot-after"
ROOT = Path(__file__).resolve().parents[4]


@pytest.fixture
def journal(tmp_path):
    journal = jr.Journal(str(tmp_path / "state"))
    journal.ensure()
    return journal


def saved(journal, vm, tmp_path, **fields):
    binary = tmp_path / "qemu-system-x86_64"
    binary.write_text("")
    record = {"vm": vm, "binary": str(binary), "launch_argv": [str(binary), "-name", vm], "cwd": "/",
              "ram_backends": [], "collection_version": COLLECTION_VERSION, "boot_id": OLD_BOOT}
    record.update(fields)
    return journal.set_phase(record, jr.SAVED)


class Restores:
    """restore_host as the unit calls it, without QEMU."""

    def __init__(self, monkeypatch, fail=None):
        self.calls = []
        self.fail = fail
        monkeypatch.setattr(boot_restore, "restore_host", self)

    def __call__(self, opts):
        """Each VM's own wait (before_launch), then its restore; failures gathered as restore_host gathers them."""
        self.calls.append(opts)
        journal = jr.Journal(opts.state_dir)
        failures, vms = [], []
        for vm in opts.vms:
            try:
                if opts.before_launch:
                    opts.before_launch(journal.read(vm))
            except RestoreError as exc:
                failures.append(exc.as_dict())
                continue
            if vm == self.fail:
                failures.append({"vm": vm, "error": "QEMU rejected -foo hunter2", "fix": "fix it"})
                continue
            vms.append({"vm": vm, "action": "restored", "resumed_at": 2.0, "blackout_seconds": 1.5})
        if failures:
            raise RestoreError("%d of %d VMs failed to restore" % (len(failures), len(opts.vms)), vm=failures[0]["vm"],
                               failures=failures, vms=vms)
        return {"vms": vms}


@pytest.fixture
def planned(journal, monkeypatch):
    """This boot is the planned kexec: the token minted and armed in the old boot is on the command line."""
    token = boot_token.mint(journal.state_dir, True, boot=OLD_BOOT)
    boot_token.arm(journal.state_dir, boot=OLD_BOOT)
    monkeypatch.setattr(boot_token, "read_cmdline", lambda: "root=/dev/vda %s=%s" % (boot_token.CMDLINE_KEY, token))
    monkeypatch.setattr(jr, "boot_id", lambda: NEW_BOOT)
    return token


def run(journal, timeout=0.2):
    lines = []
    code = boot_restore.restore_at_boot(journal.state_dir, timeout, 5, lines.append)
    return code, "\n".join(lines)


def test_the_planned_boot_restores_every_saved_vm_through_restore_host_and_uses_the_token(
        journal, tmp_path, planned, monkeypatch):
    restores = Restores(monkeypatch)
    saved(journal, "web1", tmp_path)
    saved(journal, "db1", tmp_path)

    code, log = run(journal)

    assert code == 0, log
    assert [sorted(call.vms) for call in restores.calls] == [["db1", "web1"]]
    assert restores.calls[0].restored_by == "boot unit"
    assert "web1: resumed" in log and "db1: resumed" in log
    assert boot_token.read(journal.state_dir)["consumed_boot_id"] == NEW_BOOT


def test_the_unit_sets_each_guests_clock_by_the_policy_its_save_recorded(journal, tmp_path, planned, monkeypatch):
    restores = Restores(monkeypatch)
    saved(journal, "web1", tmp_path, guest_time_sync="off")
    saved(journal, "db1", tmp_path, guest_time_sync="required")
    saved(journal, "old1", tmp_path)  # saved before the policy was recorded: auto, vm_restore's default

    assert run(journal)[0] == 0
    policies = restores.calls[0]
    assert {vm: guest_agent.policy_of(vm, policies.guest_time_sync, policies.guest_time_sync_per_vm)
            for vm in ("web1", "db1", "old1")} == {"web1": "off", "db1": "required", "old1": "auto"}


def test_no_token_on_this_boot_restores_nothing_and_says_why(journal, tmp_path, monkeypatch):
    restores = Restores(monkeypatch)
    boot_token.mint(journal.state_dir, True, boot=OLD_BOOT)
    boot_token.arm(journal.state_dir, boot=OLD_BOOT)
    monkeypatch.setattr(boot_token, "read_cmdline", lambda: "root=/dev/vda")
    monkeypatch.setattr(jr, "boot_id", lambda: NEW_BOOT)
    saved(journal, "web1", tmp_path)

    code, log = run(journal)

    assert code == 0 and not restores.calls
    assert "restoring nothing: this boot's command line carries no liveupdate_cpr.restore token" in log
    assert "web1" in log and journal.read("web1")["phase"] == jr.SAVED


def test_a_used_token_restores_nothing(journal, tmp_path, planned, monkeypatch):
    restores = Restores(monkeypatch)
    boot_token.consume(journal.state_dir, "boot unit", boot="an-earlier-boot")
    saved(journal, "web1", tmp_path)

    code, log = run(journal)

    assert code == 0 and not restores.calls and "already used" in log


def test_restore_at_boot_turned_off_restores_nothing_but_the_boot_stays_proved(journal, tmp_path, monkeypatch):
    restores = Restores(monkeypatch)
    token = boot_token.mint(journal.state_dir, False, boot=OLD_BOOT)
    boot_token.arm(journal.state_dir, boot=OLD_BOOT)
    monkeypatch.setattr(boot_token, "read_cmdline", lambda: "%s=%s" % (boot_token.CMDLINE_KEY, token))
    monkeypatch.setattr(jr, "boot_id", lambda: NEW_BOOT)
    saved(journal, "web1", tmp_path)

    code, log = run(journal)

    assert code == 0 and not restores.calls and "turned restore at boot off" in log
    assert boot_token.prove(journal.state_dir).planned, "Ansible's restore may still resume memmap= RAM"


def test_a_save_of_another_collection_version_is_left_to_the_rollout(journal, tmp_path, planned, monkeypatch):
    restores = Restores(monkeypatch)
    saved(journal, "old", tmp_path, collection_version="0.0.9")
    saved(journal, "web1", tmp_path)

    code, log = run(journal)

    assert code == 0 and [call.vms for call in restores.calls] == [["web1"]]
    assert "old: left saved: it was saved by liveupdate.cpr 0.0.9 and this entry point is %s" % COLLECTION_VERSION in log
    assert journal.read("old")["phase"] == jr.SAVED and "0.0.9" in journal.read("old")["boot_unit_note"]


def test_a_vm_whose_host_resources_never_appear_is_left_saved_after_a_bounded_wait(
        journal, tmp_path, planned, monkeypatch):
    restores = Restores(monkeypatch)
    saved(journal, "web1", tmp_path)
    saved(journal, "bridged", tmp_path, launch_argv=["qemu", "-netdev", "bridge,id=n0,br=nosuchbr0",
                                                     "-drive", "file=%s/disk.img,if=virtio" % tmp_path])

    code, log = run(journal, timeout=0.3)

    assert code == 0, "a VM left saved for the rollout is not a failure of the unit"
    assert [sorted(call.vms) for call in restores.calls] == [["bridged", "web1"]]
    assert re.search(r"bridged: left saved: after 0.3 s these are still missing: interface nosuchbr0, "
                     r"path .*disk.img", log), log
    assert "web1: resumed" in log and "bridged: resumed" not in log
    assert journal.read("bridged")["phase"] == jr.SAVED and "nosuchbr0" in journal.read("bridged")["boot_unit_note"]


def test_each_vm_starts_once_its_own_resources_exist_not_when_every_vms_do(journal, tmp_path, planned, monkeypatch):
    """The real restore_host, QEMU's part left out: late's disk appears only once early has been restored, so a
    wait for every VM's resources before any restore would leave late saved."""
    late_disk = tmp_path / "late.img"
    saved(journal, "early", tmp_path)
    saved(journal, "late", tmp_path, launch_argv=["qemu", "-drive", "file=%s,if=virtio" % late_disk])

    def restore_one(record, journal, keep_state, timeout, restored_by):
        if record["vm"] == "early":
            late_disk.write_text("")
        return journal.set_phase(record, jr.RESTORED, restored_by=restored_by, resumed_at=2.0, blackout_seconds=1.5)
    monkeypatch.setattr(restore, "restore_one", restore_one)

    code, log = run(journal, timeout=10)

    assert code == 0, log
    assert [journal.read(vm)["phase"] for vm in ("early", "late")] == [jr.RESTORED, jr.RESTORED]
    assert "early: resumed" in log and "late: resumed" in log


def test_a_failed_restore_fails_the_unit_with_the_reason_and_no_secret(journal, tmp_path, planned, monkeypatch):
    restores = Restores(monkeypatch, fail="web1")
    saved(journal, "web1", tmp_path)

    def raise_with_secret(opts):
        try:
            restores(opts)
        except RestoreError as exc:
            exc.secrets.add("hunter2")
            raise
    monkeypatch.setattr(boot_restore, "restore_host", raise_with_secret)

    code, log = run(journal)

    assert code == 1
    assert "web1: NOT restored: QEMU rejected -foo %s" % qemu_argv.REDACTED in log and "hunter2" not in log


# -- what a VM waits for ----------------------------------------------------------------------------------------
def test_host_resources_are_what_qemu_opens_and_may_appear_late():
    argv = ["qemu", "-drive", "file=disk.img,if=virtio", "-blockdev",
            '{"driver":"qcow2","node-name":"d1","file":{"driver":"file","filename":"/srv/d1.qcow2"}}',
            "-drive", "file=nbd:host:1234,if=virtio", "-chardev", "socket,id=vu,path=/run/vhost/vu.sock",
            "-chardev", "socket,id=mon,path=/run/qmp/mon.sock,server=on,wait=off",
            "-netdev", "bridge,id=n0,br=br1", "-netdev", "tap,id=n1,helper=/usr/lib/qemu/qemu-bridge-helper,br=br2",
            "-netdev", "user,id=n2", "-kernel", "/boot/vmlinuz"]
    assert qemu_argv.host_resources(argv, cwd="/var/lib/vms") == [
        ("path", "/var/lib/vms/disk.img"), ("path", "/srv/d1.qcow2"), ("path", "/run/vhost/vu.sock"),
        ("interface", "br1"), ("interface", "br2"), ("path", "/boot/vmlinuz")]


def test_resources_include_the_binary_and_the_ram_backing(tmp_path):
    record = {"binary": "/usr/bin/qemu-system-x86_64", "launch_argv": ["qemu"],
              "ram_backends": [{"id": "ram0", "mem_path": "/dev/dax0.0"}, {"id": "ram1"}]}
    assert boot_restore.resources_of(record) == [("path", "/usr/bin/qemu-system-x86_64"), ("path", "/dev/dax0.0")]


# -- the unit and its installation ------------------------------------------------------------------------------
def test_the_unit_is_ordered_early_and_on_nothing_that_waits_for_the_network_or_sshd():
    unit = configparser.ConfigParser(strict=False)
    unit.read_string(boot_restore.unit_text("/opt/liveupdate-cpr/venv", "/var/lib/liveupdate-cpr"))
    ordering = " ".join(unit["Unit"].get(key, "") for key in ("After", "Requires", "Wants", "BindsTo"))
    for late in ("ssh", "network", "multi-user"):
        assert late not in ordering
    assert unit["Unit"]["DefaultDependencies"] == "no", "else multi-user.target would be ordered after it"
    # the root filesystem writable, not the whole of local-fs.target: the guests' own units wait for that
    assert unit["Unit"]["After"].split() == ["systemd-remount-fs.service", "systemd-journald.socket"]
    assert "After=local-fs.target systemd-journald.socket" in launcher.EARLY_BOOT_PROPERTIES
    assert unit["Unit"]["RequiresMountsFor"] == "/var/lib/liveupdate-cpr /opt/liveupdate-cpr/venv"
    assert unit["Service"]["Type"] == "oneshot"
    assert unit["Service"]["ExecStart"] == (
        "/opt/liveupdate-cpr/venv/bin/liveupdate-cpr-restore --state-dir /var/lib/liveupdate-cpr")


def test_the_engine_is_read_from_the_collection_dir_or_from_ansibles_payload_zip(tmp_path, monkeypatch):
    from_dir = boot_restore.engine_sources()
    assert {"boot_restore.py", "restore.py", "version.py"} <= set(from_dir)

    payload = tmp_path / "ansible_payload.zip"
    with zipfile.ZipFile(payload, "w") as archive:
        for name, content in from_dir.items():
            archive.writestr(boot_restore.PACKAGE + "/" + name, content)
        archive.writestr("ansible/module_utils/basic.py", "")
    monkeypatch.setattr(boot_restore, "__file__", str(payload) + "/" + boot_restore.PACKAGE + "/boot_restore.py")
    assert boot_restore.engine_sources() == from_dir


def test_the_installed_entry_point_runs_the_installed_engine(tmp_path, monkeypatch):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    os.symlink(os.path.realpath(sys.executable), venv / "bin" / "python")
    monkeypatch.setattr(boot_restore, "systemd_is_init", lambda: False)

    result = boot_restore.ensure(boot_restore.UnitOptions(venv=str(venv), state_dir=str(tmp_path / "state")))

    assert result["changed"] and not result["unit"]["active"]
    assert "systemd is not PID 1" in result["unit"]["reason"]
    assert boot_restore.installed_version(str(venv)) == COLLECTION_VERSION
    assert not boot_restore.ensure(boot_restore.UnitOptions(venv=str(venv), state_dir=str(tmp_path / "s")))["changed"]
    shown = subprocess.run([str(venv / "bin" / boot_restore.ENTRY_POINT), "--state-dir", str(tmp_path / "state")],
                           capture_output=True, text=True, check=False, env={"PATH": "/usr/bin:/bin"})
    assert shown.returncode == 0, shown.stderr
    assert "liveupdate.cpr %s restore at boot" % COLLECTION_VERSION in shown.stdout
    assert "restoring nothing" in shown.stdout


def test_an_unplain_path_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(Exception, match="not a plain absolute path"):
        boot_restore.ensure(boot_restore.UnitOptions(venv=str(tmp_path / "my venv")))


def test_the_engine_version_is_galaxys():
    galaxy = (ROOT / "galaxy.yml").read_text()
    assert re.search(r"^version: %s$" % re.escape(COLLECTION_VERSION), galaxy, re.M)


class FakeSystemd:
    """systemctl as seen by ensure/remove: which unit is enabled, and every call."""

    def __init__(self, monkeypatch):
        self.enabled = False
        self.calls = []
        monkeypatch.setattr(boot_restore, "systemd_is_init", lambda: True)
        monkeypatch.setattr(boot_restore, "_systemctl", self)

    def __call__(self, *args):
        self.calls.append(args)
        if args[0] == "enable":
            self.enabled = True
        elif args[0] == "disable":
            self.enabled = False
        code = 0 if args[0] != "is-enabled" or self.enabled else 1
        return subprocess.CompletedProcess(("systemctl",) + args, code, "", "")


def test_state_absent_takes_unit_entry_point_engine_and_token_away_and_keeps_the_journal(tmp_path, monkeypatch):
    venv, units = tmp_path / "venv", tmp_path / "units"
    (venv / "bin").mkdir(parents=True)
    os.symlink(os.path.realpath(sys.executable), venv / "bin" / "python")
    systemd = FakeSystemd(monkeypatch)
    opts = {"venv": str(venv), "state_dir": str(tmp_path / "state"), "unit_dir": str(units)}
    installed = boot_restore.ensure(boot_restore.UnitOptions(mint_token=True, **opts))
    assert installed["unit"]["active"] and systemd.enabled
    journal = jr.Journal(opts["state_dir"])
    saved(journal, "vm1", tmp_path)

    checked = boot_restore.ensure(boot_restore.UnitOptions(state="absent", check_mode=True, **opts))
    assert checked["changed"] and systemd.enabled and (units / boot_restore.UNIT_NAME).exists()

    removed = boot_restore.ensure(boot_restore.UnitOptions(state="absent", **opts))

    assert removed["changed"] and not removed["unit"]["active"]
    assert set(removed["removed"]) == {"disabled " + boot_restore.UNIT_NAME, str(units / boot_restore.UNIT_NAME),
                                       str(venv / "bin" / boot_restore.ENTRY_POINT), boot_restore.engine_dir(str(venv)),
                                       boot_token.token_path(opts["state_dir"])}
    assert not systemd.enabled and ("daemon-reload",) in systemd.calls
    assert boot_restore.installed_version(str(venv)) is None
    assert boot_token.read(opts["state_dir"]) is None
    assert journal.read("vm1")["phase"] == jr.SAVED  # the rollout still restores it
    assert (venv / "bin" / "python").exists()
    again = boot_restore.ensure(boot_restore.UnitOptions(state="absent", **opts))
    assert not again["changed"] and again["removed"] == []


def test_state_absent_refuses_to_mint_a_token(tmp_path):
    with pytest.raises(Exception, match="mint_token and state=absent"):
        boot_restore.ensure(boot_restore.UnitOptions(venv=str(tmp_path), state="absent", mint_token=True))
