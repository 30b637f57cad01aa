# Copyright: liveupdate.cpr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Batches as a play's `serial` and `order` keywords form them: the plan and each host's batch number."""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Sequence

from ansible.errors import AnsibleFilterError

DOCUMENTATION = r"""
name: batches
short_description: Split hosts into the batches that a play's serial and order keywords form
version_added: 0.1.0
description:
  - Follows Ansible's rules for C(order) (inventory, reverse_inventory, sorted, reverse_sorted) and for C(serial) - a
    number, a percentage, or a list of both whose last entry repeats - so the printed plan names the batches that
    really run.
  - C(shuffle) is refused. Ansible shuffles when the play starts, unseeded, so no plan could name its batches.
positional: serial, order
options:
  _input:
    description: The hosts, in inventory (host pattern) order.
    type: list
    elements: str
    required: true
  serial:
    description: What C(serial) is set to.
    type: raw
    required: true
  order:
    description: What C(order) is set to.
    type: str
    default: inventory
"""

EXAMPLES = r"""
- name: Show the batches
  ansible.builtin.debug:
    msg: "{{ ansible_play_hosts_all | liveupdate.cpr.batches([1, '50%'], 'sorted') }}"
"""

RETURN = r"""
_value:
  description: A list of batches, each a list of hosts.
  type: list
  elements: list
"""


def _size(entry: Any, total: int) -> int:
    text = str(entry).strip()
    try:
        size = int(total * float(text[:-1]) / 100.0) if text.endswith("%") else int(text)
    except ValueError as exc:
        raise AnsibleFilterError("liveupdate.cpr.batches: %r is not a number or a percentage" % entry) from exc
    return max(size, 1) if size > 0 or text.endswith("%") else total


ORDERS = ("inventory", "reverse_inventory", "sorted", "reverse_sorted")


def ordered(hosts: Sequence[str], order: str) -> List[str]:
    """The hosts as Ansible's InventoryManager.get_hosts orders them for a play."""
    if order not in ORDERS:
        reason = (" Ansible shuffles when the rollout play starts, unseeded, so no plan could name its batches: "
                  "order the inventory or the host pattern as you want the rollout to go." if order == "shuffle" else "")
        raise AnsibleFilterError("liveupdate.cpr.batches: order %r is not one of %s.%s" % (order, ", ".join(ORDERS), reason))
    if order in ("sorted", "reverse_sorted"):
        return sorted(hosts, reverse=order == "reverse_sorted")
    return list(reversed(hosts)) if order == "reverse_inventory" else list(hosts)


def batches(hosts: Sequence[str], serial: Any, order: str = "inventory") -> List[List[str]]:
    hosts = ordered(hosts, order)
    steps = serial if isinstance(serial, (list, tuple)) else [serial]
    steps = list(steps) or [0]
    result: List[List[str]] = []
    position, index = 0, 0
    while position < len(hosts):
        size = _size(steps[min(index, len(steps) - 1)], len(hosts))
        result.append(list(hosts[position:position + size]))
        position += size
        index += 1
    return result


def batch_of(hosts: Sequence[str], host: str, serial: Any, order: str = "inventory") -> int:
    """The batch, counted from 1, that host runs in."""
    for number, batch in enumerate(batches(hosts, serial, order), start=1):
        if host in batch:
            return number
    raise AnsibleFilterError("liveupdate.cpr.batch_of: %s is not one of the hosts" % host)


class FilterModule:
    def filters(self) -> Dict[str, Callable[..., Any]]:
        return {"batches": batches, "batch_of": batch_of}
