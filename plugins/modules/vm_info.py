#!/usr/bin/python
# Copyright: liveupdate.cpr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: vm_info
short_description: Report the QEMU VMs of a host and whether each can be saved with cpr-reboot
version_added: 0.1.0
description:
  - Finds the QEMU processes of the host in scope and describes each one, from C(/proc) and over QMP.
  - For each VM it reports its argv (secrets masked), QMP socket, QEMU version, run state, versioned machine type,
    RAM backends with the RAM persistence verdict for O(reboot_method), cpr-reboot blockers in QEMU's own words,
    its supervisor, and whether its QEMU binary is outdated.
  - It also lists the VMs that the journal in O(state_dir) holds as saved and not yet restored.
  - Read-only. It sends only C(query-*) commands, plus one reversible change; QEMU lists blockers only for the
    migration mode currently set, so the mode is set to cpr-reboot, the blockers read, and the previous mode put back.
author:
  - liveupdate.cpr maintainers (@liveupdate-cpr)
extends_documentation_fragment:
  - liveupdate.cpr.common
  - liveupdate.cpr.common.selection
  - liveupdate.cpr.common.ram
  - liveupdate.cpr.common.suspend
attributes:
  check_mode:
    description: Can run in check mode and return the same facts.
    support: full
  diff_mode:
    description: Nothing changes, so there is no diff.
    support: none
  idempotent:
    description: It changes nothing; the migration mode it sets to read blockers is put back.
    support: full
"""

EXAMPLES = r"""
- name: Which VMs of this hypervisor could be saved for a kexec?
  liveupdate.cpr.vm_info:
    qmp_dir: /run/qemu
    reboot_method: kexec
  register: vm_facts

- name: Stop unless every VM is ready
  ansible.builtin.assert:
    that: vm_facts.all_ready
    fail_msg: "{{ vm_facts.not_ready | to_json }}"
"""

RETURN = r"""
vms:
  description: One entry per running VM in scope.
  returned: always
  type: list
  elements: dict
  contains:
    name: {description: VM name., type: str, returned: always}
    pid: {description: QEMU process id., type: int, returned: always}
    ready: {description: Whether vm_save would save it now., type: bool, returned: always}
    reasons:
      description: Why it is not ready; one sentence each.
      type: list
      elements: str
      returned: always
    argv: {description: Command line with secrets masked., type: list, elements: str, returned: always}
    qmp: {description: QMP socket path and form (qmp or chardev)., type: dict, returned: always}
    qemu_version: {description: Version QEMU reports over QMP., type: str, returned: when QMP answered}
    status: {description: QEMU run state., type: str, returned: when QMP answered, sample: running}
    machine_type: {description: Versioned machine type the VM runs., type: str, returned: when QMP answered, sample: pc-q35-10.0}
    blockers: {description: QEMU's reasons that block a cpr-reboot save., type: list, elements: str, returned: always}
    ram: {description: RAM persistence verdict with one entry per backend., type: dict, returned: always}
    supervisor:
      description: Parent process, cgroup and systemd unit; and why the VM is refused, if it is.
      type: dict
      returned: always
    outdated:
      description: Why the QEMU binary is outdated; null when it is not.
      type: str
      returned: always
    probe:
      description:
        - "When the VM is outdated, what the installed binary said of it (the cross-version guard): C(binary),
          C(took), C(reason) when it did not, C(version), C(left_out) (devices the probe leaves out) and C(seconds)."
      type: dict
      returned: always
saved:
  description: Journal records of VMs that are not running, with their phase.
  returned: always
  type: list
  elements: dict
all_ready:
  description: True when every VM in scope is ready and no RAM ranges overlap.
  returned: always
  type: bool
not_ready:
  description: VM name to reasons, for the VMs that are not ready.
  returned: always
  type: dict
ram_overlaps:
  description: Shared RAM ranges that two VMs both use.
  returned: always
  type: list
  elements: str
awaiting_restore:
  description: Names of VMs that are saved and down, waiting for vm_restore.
  returned: always
  type: list
  elements: str
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
from ansible_collections.liveupdate.cpr.plugins.module_utils.host_info import info_host
from ansible_collections.liveupdate.cpr.plugins.module_utils.save import SaveOptions


def main() -> None:
    module = AnsibleModule(argument_spec=spec(SCOPE_ARGS, SELECTION_ARGS, RAM_ARGS, SUSPEND_ARGS), supports_check_mode=True)
    boundary.run(module, info_host, SaveOptions)


if __name__ == "__main__":
    main()
