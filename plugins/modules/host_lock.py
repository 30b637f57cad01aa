#!/usr/bin/python
# Copyright: liveupdate.cpr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: host_lock
short_description: Take, refresh or release the per-host rollout lock
version_added: 0.1.0
description:
  - One rollout at a time per hypervisor. The lock is C(STATE_DIR/rollout.lock) (mode 0600) and names its run,
    owner and current phase; every phase refreshes its heartbeat.
  - The lock also holds O(nonce), which is unique to one C(ansible-playbook) invocation, so two invocations given the
    same O(run_id) still exclude each other, and one never releases the other's lock.
  - A lock held by another run or invocation is refused. When its heartbeat is older than O(stale_after), the run is taken to be
    dead; the lock is explained (run, controller, user, start, last phase) and is broken only when O(break_run_id)
    names that run.
  - A lock whose C(ansible-playbook) is proven dead is taken over at once, without waiting for O(stale_after). The
    task's action plugin records the controller's process (machine id, boot id, pid namespace, pid and start time)
    in the lock, and when another invocation finds the lock held, it checks that process on the controller. Only
    the same controller can prove its own process dead (it is gone, its pid now names another process, or the
    controller rebooted); a holder on another controller is waited for, or broken once stale, as above.
  - Taking and releasing the lock reports no change, so a rerun that changes nothing stays idempotent.
author:
  - liveupdate.cpr maintainers (@liveupdate-cpr)
options:
  state_dir:
    description: The journal directory of the host.
    type: path
    default: /var/lib/liveupdate-cpr
  state:
    description: V(present) takes or refreshes the lock, V(absent) releases it.
    type: str
    choices: [present, absent]
    default: present
  run_id:
    description: Identifier of this rollout run.
    type: str
    required: true
  nonce:
    description: A value unique to this invocation of the rollout. The lock is this call's only when both O(run_id) and
      O(nonce) match.
    type: str
    default: ""
  owner:
    description: Who runs the rollout (controller, user, playbook), for the explanation others get.
    type: dict
    default: {}
  phase:
    description: The phase the run is in now.
    type: str
    default: ""
  stale_after:
    description: Seconds without a heartbeat after which a lock is stale.
    type: int
    default: 7200
  break_run_id:
    description: The run id of a stale lock to take over. Only a stale lock with exactly this run id is broken.
    type: str
  take_over_nonce:
    description:
      - The nonce of a lock whose C(ansible-playbook) the controller has proven dead; only a lock holding exactly
        this nonce is taken over. The action plugin sets it; a playbook has no reason to.
    type: str
attributes:
  action:
    description: The action plugin checks, on the controller, whether the holder of a refused lock is dead.
    support: full
  check_mode:
    description: Reports whether the lock could be taken; writes nothing.
    support: full
  diff_mode:
    description: No diff.
    support: none
  idempotent:
    description: Always reports no change.
    support: full
"""

EXAMPLES = r"""
- name: Take the rollout lock
  liveupdate.cpr.host_lock:
    run_id: "{{ liveupdate_run_id }}"
    phase: preflight
    owner: {controller: "{{ lookup('pipe', 'hostname') }}"}
"""

RETURN = r"""
path:
  description: Path of the lock file.
  type: str
  returned: always
acquired:
  description: Whether this run holds the lock now.
  type: bool
  returned: when state is present
held_by:
  description: The lock's content - run_id, nonce, owner, phase, heartbeat, started.
  type: dict
  returned: always
released:
  description: Whether the lock was released.
  type: bool
  returned: when state is absent
taken_over:
  description: The lock of a dead C(ansible-playbook) that this call took over.
  type: dict
  returned: when a dead holder's lock was taken over
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.liveupdate.cpr.plugins.module_utils import boundary
from ansible_collections.liveupdate.cpr.plugins.module_utils.host_lock import LockOptions, manage


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "state_dir": {"type": "path", "default": "/var/lib/liveupdate-cpr"},
            "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
            "run_id": {"type": "str", "required": True},
            "nonce": {"type": "str", "default": ""},
            "owner": {"type": "dict", "default": {}},
            "phase": {"type": "str", "default": ""},
            "stale_after": {"type": "int", "default": 7200},
            "break_run_id": {"type": "str"},
            "take_over_nonce": {"type": "str"},
        },
        supports_check_mode=True)
    boundary.run(module, manage, LockOptions, needs_qmp=False)


if __name__ == "__main__":
    main()
