# Copyright: liveupdate.cpr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Batches as a play's `serial` keyword forms them, for the --check plan."""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Sequence

from ansible.errors import AnsibleFilterError

DOCUMENTATION = r"""
name: batches
short_description: Split hosts into the batches that a play's serial keyword forms
version_added: 0.1.0
description:
  - Follows Ansible's rules for C(serial) - a number, a percentage, or a list of both whose last entry repeats - so
    a C(--check) plan can say which hosts go in which batch.
positional: serial
options:
  _input:
    description: The hosts, in play order.
    type: list
    elements: str
    required: true
  serial:
    description: What C(serial) is set to.
    type: raw
    required: true
"""

EXAMPLES = r"""
- name: Show the batches
  ansible.builtin.debug:
    msg: "{{ ansible_play_hosts_all | liveupdate.cpr.batches([1, '50%']) }}"
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


def batches(hosts: Sequence[str], serial: Any) -> List[List[str]]:
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


class FilterModule:
    def filters(self) -> Dict[str, Callable[..., Any]]:
        return {"batches": batches}
