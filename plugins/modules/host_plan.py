#!/usr/bin/python
# Copyright: liveupdate.cpr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: host_plan
short_description: Decide what one hypervisor does in a rollout, and check that it can, before anything is paused
version_added: 0.1.0
description:
  - Reads the host's kernels (as M(liveupdate.cpr.kernel_info) does), its VMs and the journal (as
    M(liveupdate.cpr.vm_info) does), and decides the host's action and the reboot it will really get.
  - The rules live in one place, C(plugins/module_utils/host_plan.py). In order - VMs an earlier run saved in this
    boot are finished (V(finish_cycle)), VMs saved before this boot are restored (V(restore)); then O(force) or a
    needed kernel gives V(cycle); a QEMU update or a VM on an outdated binary gives V(relaunch); else V(none).
  - The reboot is V(kexec), V(reboot) (a firmware reboot, when kexec is unusable and O(kexec_fallback_to_reboot)
    allows it, or when O(reboot_method=reboot)), or V(none).
  - Each VM is assessed once, for the reboot it will get. When the action saves VMs, every check of
    M(liveupdate.cpr.vm_save) runs here in check mode, so the save itself finds nothing new to refuse.
  - Fails, naming every reason, when the action cannot be carried out - the target kernel cannot be had, kexec is
    unusable with no fallback, or a VM cannot be saved. Nothing is paused.
  - Also fails when a saved VM's RAM survives only a kexec (C(memmap=) pmem) or a QEMU restart and this boot is not
    the planned kexec (no armed restore token on its command line, as after a crash or a power cycle), because its RAM
    may be gone, and resuming it would corrupt the guest. A cold boot of such a guest is the operator's call.
author:
  - liveupdate.cpr maintainers (@liveupdate-cpr)
extends_documentation_fragment:
  - liveupdate.cpr.common.read_only
  - liveupdate.cpr.common
  - liveupdate.cpr.common.selection
  - liveupdate.cpr.common.ram
  - liveupdate.cpr.common.suspend
options:
  kernel_version:
    description:
      - The kernel release to move to, as C(uname -r) prints it. Empty means the newest of the running flavour.
    type: str
    default: ""
  update_kernel:
    description: Whether the rollout updates the kernel; without it, only O(force) reboots the host.
    type: bool
    default: true
  update_qemu:
    description: Whether the rollout updates QEMU; a host with no kernel to boot then relaunches its VMs.
    type: bool
    default: false
  force:
    description: Save and restore every VM (and reboot, unless O(reboot_method=none)) even when nothing is newer.
    type: bool
    default: false
  kexec_fallback_to_reboot:
    description: When kexec cannot be used, reboot through the firmware instead of refusing.
    type: bool
    default: false
  restore_at_boot:
    description:
      - Whether the rollout lets C(liveupdate-cpr-restore.service) restore the VMs at the planned kexec. For a kexec
        cycle the plan says whether it will (systemd PID 1, the unit installed, the entry point's version), and why not.
    type: bool
    default: true
  venv:
    description: The host's venv, where the restore-at-boot entry point is installed.
    type: path
    default: /opt/liveupdate-cpr/venv
  qemu_by_package:
    description:
      - Whether QEMU is updated by the package manager (false when the operator's own command updates it). With
        O(update_qemu) on a Debian host, the plan asks apt (C(apt-get --simulate)) what the update would do, and
        refuses the host, before anything is paused, when apt could not do it.
    type: bool
    default: true
  qemu_packages:
    description:
      - The QEMU packages to move. Empty means every installed package built from Debian's C(qemu) source; either
        way, a package the host does not have is never added.
    type: list
    elements: str
    default: []
  qemu_target_release:
    description:
      - The release to take QEMU from, as apt's C(--target-release) takes it, for example C(trixie-backports).
        Backports are C(NotAutomatic), so without it apt stays on the release's own QEMU.
      - Empty takes what apt prefers.
    type: str
    default: ""
  refresh_package_lists:
    description:
      - Refresh the package manager's metadata before planning, so that the plan sees the kernels and QEMU on offer
        (C(apt-get update) unless the lists are younger than O(package_cache_valid_time), or C(dnf makecache)).
      - Metadata only, nothing installed, so it also runs in check mode. A refresh that fails (after waiting up to
        60 s for another apt's lock, or three tries) fails the plan, naming the command and its error.
      - In one module run with the plan, so a small host pays one module start-up, not three.
    type: bool
    default: false
  package_cache_valid_time:
    description: Seconds for which apt's lists count as fresh (as M(ansible.builtin.apt)'s C(cache_valid_time)).
    type: int
    default: 3600
"""

EXAMPLES = r"""
- name: What would this hypervisor do?
  liveupdate.cpr.host_plan:
    qmp_dir: /run/qemu
    reboot_method: kexec
  register: plan

- name: Show it
  ansible.builtin.debug:
    msg: "{{ plan.plan.line }}"
"""

RETURN = r"""
action:
  description: "The host's action: cycle, finish_cycle, restore, relaunch or none."
  type: str
  returned: always
  sample: cycle
reboot_method:
  description: "The reboot the action gets: kexec, reboot (firmware) or none."
  type: str
  returned: always
vm_reboot_method:
  description: The reboot every VM's RAM was judged against.
  type: str
  returned: always
kernel:
  description: The kernel facts, as M(liveupdate.cpr.kernel_info) returns them.
  type: dict
  returned: always
situation:
  description: The inputs of the rules, as the truth table names them.
  type: dict
  returned: always
plan:
  description: The host's plan row - action, reboot_method, kernel (before -> after), qemu, vms, awaiting_restore, line.
  type: dict
  returned: always
qemu_packages:
  description:
    - "With O(update_qemu) and O(qemu_by_package) on Debian, what the QEMU update would do: C(packages) (QEMU's
      installed packages, which move), C(installed) (their versions), C(moves) (every upgrade apt plans, from and
      to), C(added) (packages apt would newly install), C(newer), C(version_before) and C(version_after) (as QEMU
      reports it), C(target_release), C(problem) (why apt could not do it) and C(line)."
  type: dict
  returned: always
vms:
  description: The running VMs in scope, as M(liveupdate.cpr.vm_info) returns them.
  type: list
  elements: dict
  returned: always
saved:
  description: Journal records of VMs that are not running.
  type: list
  elements: dict
  returned: always
awaiting_restore:
  description: Names of VMs that are saved and down.
  type: list
  elements: str
  returned: always
all_ready:
  description: Whether every VM could be saved now.
  type: bool
  returned: always
not_ready:
  description: VM name to reasons, for the VMs that could not be saved now.
  type: dict
  returned: always
ram_overlaps:
  description: Shared RAM ranges that two VMs both use.
  type: list
  elements: str
  returned: always
package_lists:
  description:
    - "With O(refresh_package_lists): C(refreshed) (whether the metadata was refreshed now) and C(age_seconds) (how old
      apt's lists were when found fresh enough; null where unknown)."
  type: dict
  returned: when O(refresh_package_lists) is true
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.liveupdate.cpr.plugins.module_utils import boundary
from ansible_collections.liveupdate.cpr.plugins.module_utils.args_common import (
    RAM_ARGS,
    SCOPE_ARGS,
    SELECTION_ARGS,
    SUSPEND_ARGS,
    spec,
)
from ansible_collections.liveupdate.cpr.plugins.module_utils.host_plan import PlanOptions, plan_host


def main() -> None:
    module = AnsibleModule(
        argument_spec=spec(SCOPE_ARGS, SELECTION_ARGS, RAM_ARGS, SUSPEND_ARGS,
                           kernel_version={"type": "str", "default": ""},
                           update_kernel={"type": "bool", "default": True},
                           update_qemu={"type": "bool", "default": False},
                           force={"type": "bool", "default": False},
                           kexec_fallback_to_reboot={"type": "bool", "default": False},
                           restore_at_boot={"type": "bool", "default": True},
                           venv={"type": "path", "default": "/opt/liveupdate-cpr/venv"},
                           qemu_by_package={"type": "bool", "default": True},
                           qemu_packages={"type": "list", "elements": "str", "default": []},
                           qemu_target_release={"type": "str", "default": ""},
                           refresh_package_lists={"type": "bool", "default": False},
                           package_cache_valid_time={"type": "int", "default": 3600}),
        supports_check_mode=True)
    boundary.run(module, plan_host, PlanOptions)


if __name__ == "__main__":
    main()
