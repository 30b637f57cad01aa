# Copyright: liveupdate.cpr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What one host does in a rollout, decided in one place: its action, the reboot it really gets, its plan row.

``decide`` holds the rules and nothing else: a pure function of the host's situation, tested against a
hand-written truth table (tests/unit/plugins/module_utils/host_plan_table.yml). ``plan_host`` gathers the
situation (kernel facts, the VMs, the journal), decides, and refuses before anything is paused when the
decision cannot be carried out.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Dict, List, Mapping, Optional, Sequence

from ansible_collections.liveupdate.cpr.plugins.module_utils import boot_restore, boot_token
from ansible_collections.liveupdate.cpr.plugins.module_utils import journal as jr
from ansible_collections.liveupdate.cpr.plugins.module_utils import kernel as kn
from ansible_collections.liveupdate.cpr.plugins.module_utils import qemu_packages as qp
from ansible_collections.liveupdate.cpr.plugins.module_utils import save as sv
from ansible_collections.liveupdate.cpr.plugins.module_utils.errors import NotReadyError, RestoreError, carrying
from ansible_collections.liveupdate.cpr.plugins.module_utils.host_info import info_of
from ansible_collections.liveupdate.cpr.plugins.module_utils.restore import check_ram_survived
from ansible_collections.liveupdate.cpr.plugins.module_utils.scope import Scope, select

# cycle: stage, save, reboot, restore. finish_cycle: an earlier run saved the VMs in this boot and stopped
# before its reboot, so stage, reboot and restore. restore: VMs saved before this boot wait for vm_restore.
ACTIONS = ("cycle", "finish_cycle", "restore", "relaunch", "none")
# What the journal holds of VMs that are down: nothing, only finished records, saves from this boot, from an
# earlier boot, or both.
JOURNAL_STATES = ("empty", "done", "this_boot", "earlier_boot", "mixed")
REBOOTING = ("cycle", "finish_cycle")
SAVING = REBOOTING + ("relaunch",)


@dataclass(frozen=True)
class Situation:
    """Everything the rules look at."""

    journal: str = "empty"
    reboot_method: str = "kexec"
    force: bool = False
    update_kernel: bool = True
    kernel_needed: bool = False
    update_qemu: bool = False
    outdated: bool = False
    kexec_usable: bool = True
    fallback: bool = False


@dataclass(frozen=True)
class Decision:
    action: str
    # kexec, reboot (firmware), none, or refused: kexec is wanted, unusable, and no fallback is allowed
    reboot: str


def journal_state(records: Sequence[Mapping[str, Any]], boot_id: str) -> str:
    awaiting = [r for r in records if r.get("phase") in jr.AWAITING_RESTORE]
    if not awaiting:
        return "done" if records else "empty"
    boots = {r.get("boot_id") == boot_id for r in awaiting}
    return "mixed" if len(boots) == 2 else ("this_boot" if boots == {True} else "earlier_boot")


def reboot_for(situation: Situation) -> str:
    """The reboot a rebooting action really gets."""
    return kn.effective_reboot(situation.reboot_method, situation.kexec_usable, situation.fallback)


def decide(situation: Situation) -> Decision:
    """The host's action: resume what an earlier run left first, then what the update needs."""
    if situation.journal == "this_boot" and situation.reboot_method != "none":
        return Decision("finish_cycle", reboot_for(situation))
    if situation.journal in ("this_boot", "earlier_boot", "mixed"):
        return Decision("restore", "none")
    if situation.force:
        if situation.reboot_method == "none":
            return Decision("relaunch", "none")
        return Decision("cycle", reboot_for(situation))
    if situation.reboot_method != "none" and situation.update_kernel and situation.kernel_needed:
        return Decision("cycle", reboot_for(situation))
    if situation.update_qemu or situation.outdated:
        return Decision("relaunch", "none")
    return Decision("none", "none")


@dataclass
class PlanOptions:
    qmp_dir: Optional[str] = None
    vms: Sequence[str] = ()
    state_dir: str = jr.DEFAULT_STATE_DIR
    timeout: float = 600.0
    reboot_method: str = "kexec"
    ram_policy: str = "fail"
    ram_policy_per_vm: Dict[str, str] = field(default_factory=dict)
    persistent_paths: Sequence[str] = ()
    kernel_version: str = ""
    update_kernel: bool = True
    update_qemu: bool = False
    force: bool = False
    kexec_fallback_to_reboot: bool = False
    restore_at_boot: bool = True
    venv: str = boot_restore.DEFAULT_VENV
    check_mode: bool = False
    guest_suspend: str = "auto"
    guest_suspend_per_vm: Dict[str, str] = field(default_factory=dict)
    # QEMU by apt (not the operator's qemu_update_command): which packages, from which release
    qemu_by_package: bool = True
    qemu_packages: Sequence[str] = ()
    qemu_target_release: str = ""
    # the package manager's metadata, refreshed first (apt's lists unless younger than package_cache_valid_time)
    refresh_package_lists: bool = False
    package_cache_valid_time: float = 3600.0

    def save_options(self, reboot_method: str) -> sv.SaveOptions:
        return sv.SaveOptions(qmp_dir=self.qmp_dir, vms=self.vms, state_dir=self.state_dir, reboot_method=reboot_method,
                              ram_policy=self.ram_policy, ram_policy_per_vm=self.ram_policy_per_vm,
                              persistent_paths=self.persistent_paths, timeout=self.timeout, check_mode=True,
                              guest_suspend=self.guest_suspend, guest_suspend_per_vm=self.guest_suspend_per_vm)


def vm_reboot_method(decision: Decision, requested: str) -> str:
    """The reboot each VM's RAM must survive: none for a relaunch, kexec when a refused kexec is judged anyway."""
    if decision.action not in REBOOTING:
        return "none"
    return requested if decision.reboot == "refused" else decision.reboot


def refusals(decision: Decision, kernel: Mapping[str, Any], opts: PlanOptions) -> List[str]:
    """Why the decision cannot be carried out on this host; nothing has been paused yet."""
    problems = []
    offered = list(kernel["installed"]) + list(kernel["available"])
    if decision.action == "cycle" and opts.update_kernel and kernel["target"] not in offered:
        problems.append(
            "kernel %s is neither installed nor offered by the package manager (it offers %s for flavour %s). Fix "
            "liveupdate_kernel_version or the host's repositories" % (
                kernel["target"], ", ".join(kernel["available"]) or "nothing newer", kernel["flavour"] or "default"))
    if decision.reboot == "refused":
        problems.append(
            "kexec cannot be used (%s). Install kexec-tools, or allow liveupdate_kexec_fallback_to_reboot=true when "
            "every VM's RAM survives a firmware reboot" % "; ".join(kernel["kexec"]["reasons"]))
    return problems


def outside_the_scope(decision: Decision, scope: Scope) -> List[str]:
    """A reboot takes down every QEMU on the host: one the rollout does not save would die with it."""
    if decision.action not in REBOOTING or decision.reboot not in ("kexec", "reboot") or not scope.outside:
        return []
    return ["%d QEMU(s) run on this host outside the rollout's scope, and would die unsaved in its %s: %s. Bring them "
            "into the scope (liveupdate_qmp_dir, liveupdate_vms) so that they are saved too, or shut them down first" % (
                len(scope.outside), decision.reboot, ", ".join(
                    "%s (pid %d%s)" % (vm.name, vm.pid, ", QMP %s" % vm.qmp.path if vm.qmp else ", no QMP socket")
                    for vm in sorted(scope.outside, key=lambda vm: vm.pid)))]


def lost_ram(records: Sequence[Dict[str, Any]], state_dir: str) -> List[str]:
    """The saves that wait for a restore this boot may not do: their RAM may be gone (restore.check_ram_survived)."""
    waiting = [r for r in records if r.get("phase") in jr.AWAITING_RESTORE]
    if not waiting:
        return []
    proof, boot = boot_token.prove(state_dir), jr.boot_id()
    problems = []
    for record in waiting:
        try:
            check_ram_survived(record, proof, boot)
        except RestoreError as exc:
            problems.append("%s: %s To fix: %s" % (record["vm"], exc.message, exc.fix))
    return problems


def plan_row(decision: Decision, kernel: Mapping[str, Any], info: Mapping[str, Any],
             unit: Optional[Mapping[str, Any]] = None, qemu: Optional[qp.QemuUpgrade] = None) -> Dict[str, Any]:
    target = " -> %s" % kernel["target"] if decision.action in REBOOTING and kernel["target"] != kernel["running"] else ""
    vms = [{"vm": vm["name"], "mode": (vm.get("ram") or {}).get("mode"), "policy": (vm.get("ram") or {}).get("policy"),
            "blockers": vm["blockers"], "outdated": vm["outdated"]} for vm in info["vms"]]
    waiting = "  awaiting restore: %s" % ",".join(info["awaiting_restore"]) if info["awaiting_restore"] else ""
    at_boot = ""
    if unit is not None:
        at_boot = "  restore at boot: %s" % (unit["reason"] if unit["active"] else "off (%s)" % unit["reason"])
    line = "%s  reboot %s  kernel %s%s%s  VMs %s%s%s" % (
        decision.action, decision.reboot, kernel["running"], target, "  %s" % qemu.line() if qemu else "",
        " ".join("%s:%s" % (vm["vm"], vm["mode"]) for vm in vms) or "-", waiting, at_boot)
    return {"action": decision.action, "reboot_method": decision.reboot,
            "kernel": "%s%s" % (kernel["running"], target), "qemu": qemu.line() if qemu else None, "vms": vms,
            "awaiting_restore": info["awaiting_restore"], "restore_at_boot": unit, "line": line}


def plan_host(opts: PlanOptions) -> Dict[str, Any]:
    # in this module run rather than apt's own: on a small host each module start-up costs seconds
    lists = kn.refresh_package_lists(opts.package_cache_valid_time) if opts.refresh_package_lists else None
    # without a kernel to install, an installed kernel can still be the target of a forced cycle: no need to ask
    # the package manager
    kernel = kn.kernel_facts(kn.KernelOptions(version=opts.kernel_version, offered=opts.update_kernel))
    # apt's own resolver, simulated, in the fleet-wide preflight: a package it cannot have stops the rollout here
    qemu = qp.plan_apt(opts.qemu_target_release, opts.qemu_packages) \
        if opts.update_qemu and opts.qemu_by_package and kn.family() == "debian" else None
    journal = jr.Journal(opts.state_dir)
    # A save or restore still running here (a module a killed controller left, or the boot unit) holds the VMs'
    # monitors and changes their records: the plan waits for it, as the save and the restore do, and plans on what
    # it leaves.
    with journal.vms_lock(opts.timeout, create=False):
        records = {r["vm"]: r for r in journal.records()}
        scope = select(opts.qmp_dir, opts.vms, records)
        with carrying(scope.secrets):
            planned = _plan_in_scope(opts, kernel, journal, records, scope, qemu)
    return dict(planned, package_lists=lists) if lists is not None else planned


def _plan_in_scope(opts: PlanOptions, kernel: Dict[str, Any], journal: jr.Journal, records: Dict[str, Dict[str, Any]],
                   scope: Scope, qemu: Optional[qp.QemuUpgrade] = None) -> Dict[str, Any]:
    # the saves that wait for this host: a running VM's record is no resume (its conflict is refused below), except
    # where a restore whose task died left its QEMU: that restore is still to finish (restore._left_behind)
    left_behind = {vm.name for vm in scope.running
                   if records.get(vm.name, {}).get("phase") in (jr.RESTORING, jr.RESTORE_FAILED)}
    running = {vm.name for vm in scope.running} - left_behind
    to_save = [vm for vm in scope.running if vm.name not in left_behind]
    mine = [r for name, r in records.items() if name not in running and (not opts.vms or name in opts.vms)]
    situation = Situation(
        journal=journal_state(mine, kernel["boot_id"]), reboot_method=opts.reboot_method, force=opts.force,
        update_kernel=opts.update_kernel, kernel_needed=kernel["needed"], update_qemu=opts.update_qemu,
        kexec_usable=kernel["kexec"]["usable"], fallback=opts.kexec_fallback_to_reboot)
    # Each VM is assessed once; outdated does not depend on the reboot, the RAM verdict does.
    guess = vm_reboot_method(decide(replace(situation, outdated=False)), opts.reboot_method)
    assessed = sv.assess_all(to_save, opts.save_options(guess), check_outdated=True, records=records)
    decision = decide(replace(situation, outdated=any(r.outdated for r in assessed)))
    method = vm_reboot_method(decision, opts.reboot_method)
    if method != guess:
        assessed = sv.assess_all(to_save, opts.save_options(method), check_outdated=True, records=records)
    info = info_of(assessed, records, scope, opts.vms)
    problems = refusals(decision, kernel, opts) + outside_the_scope(decision, scope) + lost_ram(mine, opts.state_dir)
    if qemu is not None and qemu.problem:
        problems.append("QEMU's packages (%s) cannot be updated%s: %s. Fix the host's sources, set "
                        "liveupdate_qemu_target_release to a release that offers all of them, or list the packages "
                        "to move in liveupdate_qemu_packages" % (
                            ", ".join(qemu.packages), " from %s" % qemu.target_release if qemu.target_release else "",
                            qemu.problem))
    if problems:
        if decision.action in SAVING:
            # the VMs' own reasons too: one run names everything to fix, not one reason per rerun
            problems += sv.vm_problems(assessed)
        raise NotReadyError("nothing was paused, because: %s." % " | ".join(problems), action=decision.action)
    if decision.action in SAVING:
        # vm_save's own checks, in check mode: the save itself will find nothing new to refuse
        sv.check_state_dir(journal, True)
        sv.check_running(scope.by_name(), records, journal)
        sv.preflight(assessed, journal, True)
    # only a kexec carries the token the unit restores on
    unit = boot_restore.status(boot_restore.UnitOptions(venv=opts.venv, state_dir=opts.state_dir,
                                                        restore_at_boot=opts.restore_at_boot)) \
        if decision.action in REBOOTING and decision.reboot == "kexec" else None
    return dict(info, action=decision.action, reboot_method=decision.reboot, vm_reboot_method=method,
                kernel=kernel, plan=plan_row(decision, kernel, info, unit, qemu), situation=asdict(situation),
                qemu_packages=qemu.as_dict() if qemu else None)
