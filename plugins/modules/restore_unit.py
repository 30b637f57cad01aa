#!/usr/bin/python
# Copyright: liveupdate.cpr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: restore_unit
short_description: Install the restore-at-boot unit and its entry point, and mint the next kexec's restore token
version_added: 0.1.0
description:
  - Installs the collection's own module_utils, as this task shipped them, into O(venv) (C(lib/liveupdate-cpr)), and
    the entry point C(bin/liveupdate-cpr-restore) that runs them. It is the engine C(vm_restore) runs, not a copy of it,
    and it is rewritten whenever it differs, so a controller upgrade never leaves an older engine on the host.
  - Where systemd is PID 1, installs and enables C(liveupdate-cpr-restore.service) in O(unit_dir), a oneshot ordered
    after C(local-fs.target), the mounts of O(state_dir) and O(venv) and journald's socket, and on nothing later (no
    sshd, network, C(sysinit.target) or C(multi-user.target)). At boot it restores only when the boot's command line
    carries the armed restore token, only saves of its own collection version, and each VM only once its host
    resources exist (bounded waits).
  - With O(mint_token), mints a new one-time token in O(state_dir) (mode 0600) and returns it, to be put on the new
    kernel's command line as C(liveupdate_cpr.restore=TOKEN) by C(kexec -l). C(vm_save) arms it once every VM of the
    host is saved. Any older token is void.
  - Reports whether restore at boot is on for this host, and if not, why.
author:
  - liveupdate.cpr maintainers (@liveupdate-cpr)
options:
  venv:
    description: The host's venv that runs the collection's modules (the host_prepare role's).
    type: path
    default: /opt/liveupdate-cpr/venv
  state_dir:
    description: The journal directory of the host.
    type: path
    default: /var/lib/liveupdate-cpr
  unit_dir:
    description: Where the unit file goes.
    type: path
    default: /etc/systemd/system
  restore_at_boot:
    description: Whether the unit may restore at the planned kexec this token is for. V(false) leaves restores to Ansible.
    type: bool
    default: true
  mint_token:
    description: Mint the next kexec's restore token. Not with O(state=absent).
    type: bool
    default: false
  state:
    description:
      - V(present) installs (and updates) the engine, the entry point and the unit.
      - V(absent) disables and deletes the unit, deletes the entry point and its engine from O(venv), and voids the
        restore token. The journal and any state files stay, so VMs saved before are restored by the rollout
        (M(liveupdate.cpr.vm_restore)), never lost.
    type: str
    choices: [present, absent]
    default: present
attributes:
  check_mode:
    description: Reports what would be installed or removed; mints nothing.
    support: full
  diff_mode:
    description: No diff is produced.
    support: none
  idempotent:
    description: Without O(mint_token), a second run changes nothing, for either O(state). Minting always changes the token.
    support: partial
seealso:
  - module: liveupdate.cpr.vm_restore
  - module: liveupdate.cpr.vm_save
"""

EXAMPLES = r"""
- name: Install restore at boot (the host_prepare role does this)
  liveupdate.cpr.restore_unit:
    venv: /opt/liveupdate-cpr/venv

- name: Mint the token of the next kexec (the rollout's stage does this)
  liveupdate.cpr.restore_unit:
    mint_token: true
  register: unit

- name: Put it on the new kernel's command line
  ansible.builtin.command:
    argv: [kexec, -l, /boot/vmlinuz, "--command-line=root=/dev/vda liveupdate_cpr.restore={{ unit.token }}"]
  changed_when: true

- name: Take restore at boot off a host for good (the rollout then restores every VM itself)
  liveupdate.cpr.restore_unit:
    venv: /opt/liveupdate-cpr/venv
    state: absent
"""

RETURN = r"""
installed:
  description: The files written (and C(enabled UNIT) when the unit was enabled); empty with O(state=absent).
  returned: always
  type: list
  elements: str
removed:
  description: The files and directories deleted (and C(disabled UNIT) when the unit was disabled).
  returned: when O(state=absent)
  type: list
  elements: str
unit:
  description: Whether restore at boot is on (C(active)), and if not, why (C(reason)); the installed and running versions.
  returned: always
  type: dict
token:
  description: The new token, for C(liveupdate_cpr.restore=) on the kernel command line.
  returned: when O(mint_token) and not in check mode
  type: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.liveupdate.cpr.plugins.module_utils import boundary
from ansible_collections.liveupdate.cpr.plugins.module_utils.boot_restore import (
    DEFAULT_UNIT_DIR,
    DEFAULT_VENV,
    UnitOptions,
    ensure,
)
from ansible_collections.liveupdate.cpr.plugins.module_utils.journal import DEFAULT_STATE_DIR


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "venv": {"type": "path", "default": DEFAULT_VENV},
            "state_dir": {"type": "path", "default": DEFAULT_STATE_DIR},
            "unit_dir": {"type": "path", "default": DEFAULT_UNIT_DIR},
            "restore_at_boot": {"type": "bool", "default": True},
            "mint_token": {"type": "bool", "default": False},
            "state": {"type": "str", "default": "present", "choices": ["present", "absent"]},
        },
        supports_check_mode=True)
    boundary.run(module, ensure, UnitOptions, needs_qmp=False)


if __name__ == "__main__":
    main()
