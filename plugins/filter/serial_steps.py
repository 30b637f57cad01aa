# Copyright: liveupdate.cpr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A batch list written as text ("1,2,50%"), as an AWX survey submits it, turned into what serial takes."""

from __future__ import annotations

import re
from typing import Any, Callable, Dict

from ansible.errors import AnsibleFilterError

DOCUMENTATION = r"""
name: serial_steps
short_description: Read a batch list given as text, such as C(1,2,50%), into the value a play's serial keyword takes
version_added: 0.1.0
description:
  - An AWX survey answers with text, so a canary-then-percentages list arrives as C("1,2,50%").
    This filter splits it on commas into C([1, 2, "50%"]).
  - A list, a number, or a single C("25%") passes through, so C(-e) values keep working.
  - Anything that is not a positive whole number or a percentage is refused, so a typo never becomes one batch of
    every host.
positional: ""
options:
  _input:
    description: The batch setting; a number, a percentage, a list of both, or text with comma-separated entries.
    type: raw
    required: true
"""

EXAMPLES = r"""
- name: Update the hosts batch by batch
  hosts: hypervisors
  serial: "{{ liveupdate_batch | default(1) | liveupdate.cpr.serial_steps }}"
  tasks: []
"""

RETURN = r"""
_value:
  description: An int, a percentage string, or a list of them.
  type: raw
"""

_STEP = re.compile(r"^(?:[1-9][0-9]*|(?:[0-9]+(?:\.[0-9]+)?)%)$")


def _step(text: str, whole: Any) -> Any:
    step = text.strip()
    if not _STEP.match(step) or (step.endswith("%") and float(step[:-1]) <= 0):
        raise AnsibleFilterError("liveupdate.cpr.serial_steps: %r in %r is not a positive number of hosts or a percentage"
                                 % (text, whole))
    return step if step.endswith("%") else int(step)


def serial_steps(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    return [_step(part, value) for part in value.split(",")] if "," in value else _step(value, value)


class FilterModule:
    def filters(self) -> Dict[str, Callable[..., Any]]:
        return {"serial_steps": serial_steps}
