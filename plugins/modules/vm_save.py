#!/usr/bin/python
# Copyright: liveupdate.cpr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: vm_save
short_description: Save the QEMU VMs of a host with cpr-reboot, so they survive a kexec, reboot or QEMU update
version_added: 0.1.0
description:
  - Checks every VM in scope first, and refuses the whole host before any VM is paused if one of them is not ready
    (RAM that would be lost under O(ram_policy=fail), a cpr-reboot blocker, a restarting supervisor, no QMP socket,
    overlapping shared RAM, too little space in O(state_dir)).
  - When a VM's QEMU binary was replaced since it started (a new QEMU is installed), that check includes the
    cross-version guard. The installed binary is started with the VM's configuration rewritten (private sockets, NIC
    backends as hub ports, disks as C(null-co), RAM on a private sparse file, exclusive devices such as VFIO left
    out), the machine type pinned, plus C(-S -incoming defer); a binary that refuses it, for example one without
    the VM's machine type, refuses the host. The running VM is never touched.
  - Then saves all of them at once. For each VM it writes the journal record (argv, cwd, environment, uid/gid,
    QMP socket, QEMU version, versioned machine type, RAM policy) to disk, sets x-ignore-shared and mode cpr-reboot,
    migrates to C(file:STATE_DIR/NAME.state), checks the VM is C(postmigrate), fsyncs and hashes the state file,
    sends C(quit) and waits for the process to exit.
  - A VM whose save fails is resumed and left running; its partial state file is renamed C(NAME.state.partial),
    its journal record says C(save_failed) with QEMU's reason, and the task fails.
  - VMs the journal already holds as saved are reported unchanged.
  - O(guest_time_sync) and O(guest_time_sync_per_vm) are not used by the save itself. Each VM's policy is kept in its
    journal record, for the boot unit (M(liveupdate.cpr.restore_unit)), which resumes the VMs with no options of its
    own; M(liveupdate.cpr.vm_restore) takes its own.
author:
  - liveupdate.cpr maintainers (@liveupdate-cpr)
extends_documentation_fragment:
  - liveupdate.cpr.common
  - liveupdate.cpr.common.selection
  - liveupdate.cpr.common.ram
  - liveupdate.cpr.common.suspend
  - liveupdate.cpr.common.guest
attributes:
  check_mode:
    description: Runs every check and reports which VMs would be saved and how; sends only C(query-*) commands
      plus the reversible mode change that reading blockers needs.
    support: full
  diff_mode:
    description: No diff is produced.
    support: none
  idempotent:
    description: VMs already saved are reported unchanged; a second run changes nothing.
    support: full
seealso:
  - module: liveupdate.cpr.vm_restore
  - module: liveupdate.cpr.vm_info
"""

EXAMPLES = r"""
- name: Save every VM whose QMP socket is in /run/qemu, before a kexec
  liveupdate.cpr.vm_save:
    qmp_dir: /run/qemu
    reboot_method: kexec

- name: Save two VMs; one has anonymous RAM, so write its RAM into the state file
  liveupdate.cpr.vm_save:
    vms: [web1, db1]
    ram_policy_per_vm:
      db1: save_ram
"""

RETURN = r"""
vms:
  description: One entry per VM, saved now or before.
  returned: always
  type: list
  elements: dict
  contains:
    vm: {description: VM name., type: str, returned: always}
    action: {description: "saved, already_saved or (check mode) would_save.", type: str, returned: always}
    phase: {description: Journal phase., type: str, returned: unless check mode}
    mode: {description: "ignore-shared (RAM stays in place) or save-ram (RAM in the state file).", type: str, returned: always}
    state_file: {description: Path of the state file., type: str, returned: unless check mode}
    state_size: {description: Bytes in the state file., type: int, returned: when saved}
    state_sha256: {description: Hash checked before the restore., type: str, returned: when saved}
    paused_at: {description: Epoch seconds of QEMU's STOP event., type: float, returned: when saved}
    suspend_seconds:
      description: For a guest suspended to RAM first (O(guest_suspend)), the seconds from C(guest-suspend-ram) to QEMU's SUSPEND.
      type: float
      returned: when suspended
    argv:
      description: The argv the restore will use (machine type pinned), secrets masked.
      type: list
      elements: str
      returned: unless check mode
restore_token_armed:
  description:
    - Whether this save armed the restore token that the host's planned kexec carries (M(liveupdate.cpr.restore_unit)).
    - Only a save after which no QEMU at all runs on the host arms it, whatever the scope; a host with a VM left
      running is not ready for a reboot, and its next boot restores nothing at boot.
  returned: success, unless check mode
  type: bool
failures:
  description: Per-VM errors when some saves failed; those VMs were left running.
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
from ansible_collections.liveupdate.cpr.plugins.module_utils.save import SaveOptions, save_host


def main() -> None:
    module = AnsibleModule(argument_spec=spec(SCOPE_ARGS, SELECTION_ARGS, RAM_ARGS, SUSPEND_ARGS, GUEST_ARGS),
                           supports_check_mode=True)
    boundary.run(module, save_host, SaveOptions)


if __name__ == "__main__":
    main()
