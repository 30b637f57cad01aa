#!/usr/bin/python
# Copyright: liveupdate.cpr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: phase
short_description: Mark the start or end of a rollout phase, and refresh the host's rollout lock, in one task
version_added: 0.1.0
description:
  - An action plugin. It notes the controller's time of the edge in the host fact C(liveupdate_phases), a mapping of
    each phase to its C(start) and C(end) in epoch seconds, and at a start it sets C(liveupdate_phase) to the phase.
  - When O(lock) is given, a start also refreshes the lock's heartbeat and phase through M(liveupdate.cpr.host_lock),
    and fails when the lock is no longer this run's.
  - The marks of a host start afresh at the start of its C(preflight).
author:
  - liveupdate.cpr maintainers (@liveupdate-cpr)
options:
  name:
    description: The phase, for example V(save).
    type: str
    required: true
  edge:
    description: Which edge of the phase to mark.
    type: str
    choices: [start, end]
    default: start
  lock:
    description:
      - The arguments of M(liveupdate.cpr.host_lock) (state_dir, run_id, nonce, owner, stale_after) to refresh the lock
        with at a start. Omit it where the lock must not cost a module run, such as inside the VMs' blackout.
    type: dict
attributes:
  action:
    description: Runs on the controller; only the lock refresh runs a module on the host.
    support: full
  check_mode:
    description: Marks the time in check mode too; the lock module is asked in check mode.
    support: full
  diff_mode:
    description: No diff.
    support: none
  idempotent:
    description: Reports no change.
    support: full
"""

EXAMPLES = r"""
- name: Enter the save phase
  liveupdate.cpr.phase:
    name: save
    lock:
      state_dir: /var/lib/liveupdate-cpr
      run_id: "{{ liveupdate_run_id }}"
      nonce: "{{ liveupdate_run_nonce }}"

- name: End the save phase
  liveupdate.cpr.phase:
    name: save
    edge: end
"""

RETURN = r"""
lock:
  description: The lock's content after the refresh.
  type: dict
  returned: when O(lock) is given at a start
ansible_facts:
  description: C(liveupdate_phases) and, at a start, C(liveupdate_phase).
  type: dict
  returned: always
"""
