#!/usr/bin/python
# Copyright: liveupdate.cpr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: vm_relaunch
short_description: Move running QEMU VMs onto the installed QEMU binary in one call (a QEMU-only live update)
version_added: 0.1.0
description:
  - For each VM in scope whose QEMU is outdated, concurrently, saves it with cpr-reboot, quits it, starts the installed
    binary with the same argv (machine type pinned) and loads the state. Each VM is paused only for its own save,
    QEMU start and load, never for an Ansible round trip.
  - A VM is outdated when C(/proc/PID/exe) points to a deleted or replaced binary, or the installed binary reports
    another version than the running QEMU. Without O(force), up-to-date VMs are left alone.
  - Uses O(reboot_method=none) rules for RAM, so shared tmpfs RAM is fine; anonymous or memfd RAM needs
    O(ram_policy=save_ram).
  - All the checks of M(liveupdate.cpr.vm_save) run for every chosen VM before any VM is paused.
  - Sets each relaunched guest's clock through its guest agent (O(guest_time_sync)).
author:
  - liveupdate.cpr maintainers (@liveupdate-cpr)
extends_documentation_fragment:
  - liveupdate.cpr.common
  - liveupdate.cpr.common.guest
  - liveupdate.cpr.common.selection
  - liveupdate.cpr.common.ram
  - liveupdate.cpr.common.suspend
options:
  force:
    description: Cycle every VM in scope, outdated or not.
    type: bool
    default: false
  keep_state:
    description: Keep each state file after its VM is verified running.
    type: bool
    default: false
  reboot_method:
    description:
      - Only V(none) is accepted; this module restarts QEMU and never reboots the host. V(kexec) and V(reboot) are
        refused with an error.
      - To reboot into a new kernel, use M(liveupdate.cpr.vm_save), the reboot and M(liveupdate.cpr.vm_restore), as
        the C(liveupdate.cpr.liveupdate) role does.
    type: str
    default: none
attributes:
  check_mode:
    description: Reports which VMs are outdated and would be relaunched; pauses nothing.
    support: full
  diff_mode:
    description: No diff is produced.
    support: none
  idempotent:
    description: With nothing outdated it reports no change (unless O(force)).
    support: full
"""

EXAMPLES = r"""
- name: Update QEMU packages while the VMs run
  ansible.builtin.apt:
    name: qemu-system-x86
    state: latest

- name: Move every VM onto the new QEMU binary
  liveupdate.cpr.vm_relaunch:
    qmp_dir: /run/qemu
  register: relaunched
"""

RETURN = r"""
vms:
  description: One entry per VM in scope.
  returned: always
  type: list
  elements: dict
  contains:
    vm: {description: VM name., type: str, returned: always}
    action: {description: "relaunched, up_to_date or (check mode) would_relaunch.", type: str, returned: always}
    reason:
      description: Why it was relaunched; the outdated binary, or force.
      type: str
      returned: when relaunched
    previous_qemu_version: {description: Version of the QEMU it left., type: str, returned: when relaunched}
    qemu_version:
      description: Version of the QEMU it runs now, as that QEMU reports it (QMP query-version).
      type: str
      returned: always
    blackout_seconds: {description: Seconds from QEMU's STOP to its RESUME., type: float, returned: when relaunched}
    suspend_seconds:
      description: For a guest suspended to RAM before its save, the seconds from C(guest-suspend-ram) to QEMU's SUSPEND.
      type: float
      returned: when suspended
    wake_seconds:
      description: For a guest suspended to RAM before its save, the seconds from C(system_wakeup) to QEMU's WAKEUP.
      type: float
      returned: when relaunched
    guest_clock:
      description:
        - What happened to the guest's clock after its resume (O(guest_time_sync)).
        - "C(policy); C(synced); C(reason) when not synced (for example C(not synced: no agent)); C(agent), the agent
          channel's socket; C(offset_before_seconds) and C(offset_after_seconds), the guest's clock minus the host's;
          C(seconds) spent."
      type: dict
      returned: when relaunched
failures:
  description: Per-VM errors.
  returned: failure
  type: list
  elements: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.liveupdate.cpr.plugins.module_utils import boundary
from ansible_collections.liveupdate.cpr.plugins.module_utils.args_common import (
    GUEST_ARGS,
    RAM_ARGS,
    SCOPE_ARGS,
    SELECTION_ARGS,
    SUSPEND_ARGS,
    spec,
)
from ansible_collections.liveupdate.cpr.plugins.module_utils.relaunch import RelaunchOptions, relaunch_host


def main() -> None:
    module = AnsibleModule(
        argument_spec=spec(SCOPE_ARGS, SELECTION_ARGS, RAM_ARGS, GUEST_ARGS, SUSPEND_ARGS,
                           force={"type": "bool", "default": False},
                           keep_state={"type": "bool", "default": False},
                           # the choices the ram fragment documents; the engine refuses all but none, saying what to use instead
                           reboot_method={"type": "str", "choices": ["kexec", "reboot", "none"], "default": "none"}),
        supports_check_mode=True)
    boundary.run(module, relaunch_host, RelaunchOptions)


if __name__ == "__main__":
    main()
