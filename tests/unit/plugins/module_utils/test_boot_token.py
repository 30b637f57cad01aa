"""The restore token: only the kexec a rollout planned proves itself; a crash, a power cycle or a reused command line
proves nothing, and RAM that only a kexec keeps is then never resumed from."""

from __future__ import annotations

import os
import stat

import pytest

from ansible_collections.liveupdate.cpr.plugins.module_utils import boot_token, ram_verdict, restore
from ansible_collections.liveupdate.cpr.plugins.module_utils import journal as jr
from ansible_collections.liveupdate.cpr.plugins.module_utils.errors import RestoreError

OLD_BOOT, NEW_BOOT, LATER_BOOT = "boot-before-kexec", "boot-after-kexec", "a-later-boot"


@pytest.fixture
def state_dir(tmp_path):
    journal = jr.Journal(str(tmp_path / "state"))
    journal.ensure()
    return journal.state_dir


def planned_kexec(state_dir, restore_at_boot=True):
    """Mint in the old boot, arm once every VM is saved, and the new kernel's command line that kexec -l loaded."""
    token = boot_token.mint(state_dir, restore_at_boot, boot=OLD_BOOT)
    assert boot_token.arm(state_dir, boot=OLD_BOOT)
    return "root=/dev/vda ro %s=%s quiet" % (boot_token.CMDLINE_KEY, token)


def test_the_planned_kexec_proves_itself(state_dir):
    cmdline = planned_kexec(state_dir)
    proof = boot_token.prove(state_dir, cmdline, boot=NEW_BOOT)
    assert proof.planned and proof.restore_at_boot, proof.reason


def test_the_token_file_is_root_only(state_dir):
    planned_kexec(state_dir)
    assert stat.S_IMODE(os.stat(boot_token.token_path(state_dir)).st_mode) == 0o600


def test_no_token_on_the_command_line_a_crash_or_power_cycle_proves_nothing(state_dir):
    planned_kexec(state_dir)
    proof = boot_token.prove(state_dir, "root=/dev/vda ro quiet", boot=NEW_BOOT)
    assert not proof.planned
    assert "carries no liveupdate_cpr.restore token" in proof.reason


def test_a_wrong_token_proves_nothing(state_dir):
    planned_kexec(state_dir)
    proof = boot_token.prove(state_dir, "%s=%s" % (boot_token.CMDLINE_KEY, "0" * 32), boot=NEW_BOOT)
    assert not proof.planned and "not the one" in proof.reason


def test_a_token_used_by_one_boot_proves_no_later_boot(state_dir):
    cmdline = planned_kexec(state_dir)
    boot_token.consume(state_dir, "boot unit", boot=NEW_BOOT)
    assert boot_token.prove(state_dir, cmdline, boot=NEW_BOOT).planned, "the boot that used it stays proved"
    proof = boot_token.prove(state_dir, cmdline, boot=LATER_BOOT)  # e.g. kexec --reuse-cmdline later on
    assert not proof.planned and "already used" in proof.reason


def test_an_unarmed_token_proves_nothing(state_dir):
    token = boot_token.mint(state_dir, True, boot=OLD_BOOT)
    proof = boot_token.prove(state_dir, "%s=%s" % (boot_token.CMDLINE_KEY, token), boot=NEW_BOOT)
    assert not proof.planned and "never armed" in proof.reason


def test_a_token_is_armed_only_in_the_boot_that_minted_it(state_dir):
    boot_token.mint(state_dir, True, boot=OLD_BOOT)
    assert not boot_token.arm(state_dir, boot=NEW_BOOT)


def test_the_boot_that_minted_it_is_not_the_planned_one(state_dir):
    cmdline = planned_kexec(state_dir)
    assert not boot_token.prove(state_dir, cmdline, boot=OLD_BOOT).planned


def test_a_new_mint_voids_the_older_token(state_dir):
    older = planned_kexec(state_dir)
    planned_kexec(state_dir)
    assert not boot_token.prove(state_dir, older, boot=NEW_BOOT).planned


def test_the_last_token_on_the_command_line_counts_as_the_kernel_takes_it():
    assert boot_token.cmdline_token("a %s=one b %s=two" % (boot_token.CMDLINE_KEY, boot_token.CMDLINE_KEY)) == "two"
    assert boot_token.cmdline_token("liveupdate_cpr.restorex=1") is None


# -- the rule in vm_restore (and the plan) ---------------------------------------------------------------------
def record(survives, boot=OLD_BOOT):
    return {"vm": "web1", "boot_id": boot, "x_ignore_shared": True, "ram_survives": survives,
            "ram_backends": [{"id": "ram0", "mem_path": "/dev/dax0.0", "share": True}]}


@pytest.mark.parametrize("survives", ["kexec", "restart"])
def test_ram_that_only_a_kexec_or_a_restart_keeps_is_refused_after_an_unproved_reboot(state_dir, survives):
    proof = boot_token.prove(state_dir, "root=/dev/vda", boot=NEW_BOOT)
    with pytest.raises(RestoreError, match="this boot is not the planned kexec") as refused:
        restore.check_ram_survived(record(survives), proof, NEW_BOOT)
    assert refused.value.vm == "web1" and "cold boot" in refused.value.fix


def test_memmap_ram_is_resumed_after_the_planned_kexec(state_dir):
    proof = boot_token.prove(state_dir, planned_kexec(state_dir), boot=NEW_BOOT)
    restore.check_ram_survived(record("kexec"), proof, NEW_BOOT)


def test_a_restart_ram_after_the_planned_kexec_is_still_refused(state_dir):
    proof = boot_token.prove(state_dir, planned_kexec(state_dir), boot=NEW_BOOT)
    with pytest.raises(RestoreError):
        restore.check_ram_survived(record("restart"), proof, NEW_BOOT)


@pytest.mark.parametrize("survives", ["state_file", "power_cycle"])
def test_ram_in_the_state_file_or_on_an_nvdimm_needs_no_proof(state_dir, survives):
    proof = boot_token.prove(state_dir, "root=/dev/vda", boot=NEW_BOOT)
    restore.check_ram_survived(record(survives), proof, NEW_BOOT)


def test_without_a_reboot_since_the_save_any_ram_is_there(state_dir):
    proof = boot_token.prove(state_dir, "root=/dev/vda", boot=OLD_BOOT)
    restore.check_ram_survived(record("restart"), proof, OLD_BOOT)


def test_a_record_from_before_ram_survives_is_judged_by_its_reboot_method():
    assert ram_verdict.recorded_survival({"x_ignore_shared": True, "reboot_method": "kexec"}) == "kexec"
    assert ram_verdict.recorded_survival({"x_ignore_shared": True, "reboot_method": "reboot"}) == "power_cycle"
    assert ram_verdict.recorded_survival({"x_ignore_shared": False, "reboot_method": "kexec"}) == "state_file"
