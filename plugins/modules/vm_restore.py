#!/usr/bin/python
# Copyright: liveupdate.cpr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: vm_restore
short_description: Restore the QEMU VMs that vm_save saved, from the journal
version_added: 0.1.0
description:
  - For each VM the journal in O(state_dir) holds as saved, checks the state file's sha256 and that the RAM
    backing files exist, before QEMU starts.
  - Starts QEMU with the recorded argv plus C(-incoming defer), the machine type pinned to the versioned type the VM
    ran, in its recorded cwd, environment and uid/gid. Where systemd is PID 1 it runs in a transient unit
    C(liveupdate-cpr-NAME-TIME.service); elsewhere in a session of its own, logging to C(STATE_DIR/NAME.log).
    A C(-daemonize) argv works in both.
  - Sets x-ignore-shared and mode cpr-reboot as recorded, runs C(migrate-incoming) with C(exit-on-error=false),
    and checks the VM is running again (C(cont) if it ran when saved). A failed load leaves QEMU alive with the error
    readable, and keeps the state file and journal.
  - Deletes the state file only after the VM is verified running, unless O(keep_state).
  - Refuses, before QEMU starts, a VM whose RAM survives only a kexec (C(memmap=) pmem) or only a QEMU restart when
    the host rebooted since the save and this boot is not the planned kexec, that is, its command line does not
    carry the armed restore token of M(liveupdate.cpr.restore_unit) (after a crash, a power cycle or an unplanned
    reboot). RAM in the state file or on an NVDIMM needs no such proof.
  - Waits for the boot unit C(liveupdate-cpr-restore.service) while it restores, and reports the VMs it restored
    as V(restored_at_boot), with C(restored_by).
  - Reports each VM's blackout, from QEMU's STOP event at save to its RESUME event at restore.
  - Sets each resumed guest's clock through its guest agent (O(guest_time_sync)). It sets again the clocks of the
    VMs the boot unit restored in this boot, because the unit set them from a host clock fresh from the RTC.
author:
  - liveupdate.cpr maintainers (@liveupdate-cpr)
extends_documentation_fragment:
  - liveupdate.cpr.common
  - liveupdate.cpr.common.guest
options:
  keep_state:
    description: Keep the state file after a successful restore.
    type: bool
    default: false
attributes:
  check_mode:
    description: Verifies every state file and reports which VMs would be restored; starts nothing.
    support: full
  diff_mode:
    description: No diff is produced.
    support: none
  idempotent:
    description: VMs already restored are reported unchanged.
    support: full
seealso:
  - module: liveupdate.cpr.vm_save
"""

EXAMPLES = r"""
- name: Bring back every VM saved on this host
  liveupdate.cpr.vm_restore:
  register: restored

- name: Show each VM's blackout
  ansible.builtin.debug:
    msg: "{{ restored.vms | map(attribute='blackout_seconds', default='-') | list }}"
"""

RETURN = r"""
vms:
  description: One entry per VM in the journal that was chosen.
  returned: always
  type: list
  elements: dict
  contains:
    vm: {description: VM name., type: str, returned: always}
    action:
      description: "restored, restored_at_boot (by the boot unit, in this boot), already_running, not_saved or (check mode)
        would_restore."
      type: str
      returned: always
    restored_by: {description: "Who restored it: ansible or boot unit.", type: str, returned: when restored}
    pid: {description: Process id of the restored QEMU., type: int, returned: when restored}
    blackout_seconds:
      description: Seconds from QEMU's STOP event at save to its RESUME event at restore.
      type: float
      returned: when restored
    wake_seconds:
      description:
        - For a guest the save suspended to RAM (O(liveupdate.cpr.vm_save#module:guest_suspend)), the seconds from
          C(system_wakeup) to QEMU's WAKEUP event, a part of its blackout; null for any other guest.
      type: float
      returned: when restored
    launch: {description: "How QEMU was started: method, pid, systemd unit or log file.", type: dict, returned: when restored}
    qemu_version: {description: The QEMU version that saved the VM (QMP query-version)., type: str, returned: always}
    restored_qemu_version:
      description: The QEMU version that restored it, as the running QEMU reports it (QMP query-version).
      type: str
      returned: when restored
    guest_clock:
      description:
        - What happened to the guest's clock after its resume (O(guest_time_sync)).
        - "C(policy); C(synced); C(reason) when not synced (for example C(not synced: no agent)); C(agent), the agent
          channel's socket; C(offset_before_seconds) and C(offset_after_seconds), the guest's clock minus the host's;
          C(seconds) spent."
      type: dict
      returned: when restored
failures:
  description: Per-VM errors; their state files and journal records were kept.
  returned: failure
  type: list
  elements: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.liveupdate.cpr.plugins.module_utils import boundary
from ansible_collections.liveupdate.cpr.plugins.module_utils.args_common import GUEST_ARGS, SCOPE_ARGS, spec
from ansible_collections.liveupdate.cpr.plugins.module_utils.restore import RestoreOptions, restore_host


def main() -> None:
    module = AnsibleModule(argument_spec=spec(SCOPE_ARGS, GUEST_ARGS, keep_state={"type": "bool", "default": False}),
                           supports_check_mode=True)
    boundary.run(module, restore_host, RestoreOptions)


if __name__ == "__main__":
    main()
