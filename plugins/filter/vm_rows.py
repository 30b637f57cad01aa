# Copyright: liveupdate.cpr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One report row per VM from the results of vm_save, vm_restore, vm_relaunch and vm_health."""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Sequence

DOCUMENTATION = r"""
name: vm_rows
short_description: Merge per-VM results of several liveupdate.cpr modules into one row per VM
version_added: 0.1.0
description:
  - Takes a list of C(vms) lists (from vm_save, vm_restore, vm_relaunch, vm_health) and returns one row per VM with
    its mode, RAM policy, state size, pause and resume times, blackout, guest clock and health gates. Later lists win.
options:
  _input:
    description: A list of C(vms) lists.
    type: list
    elements: list
    required: true
"""

EXAMPLES = r"""
- name: One row per VM
  ansible.builtin.debug:
    msg: "{{ [saved.vms, restored.vms] | liveupdate.cpr.vm_rows }}"
"""

RETURN = r"""
_value:
  description: One dict per VM.
  type: list
  elements: dict
"""

VM_FIELDS = ("vm", "action", "mode", "ram_policy", "state_size", "paused_at", "resumed_at", "blackout_seconds",
             "reason", "previous_qemu_version", "qemu_version", "pid", "restored_by", "guest_clock",
             "suspend_seconds", "wake_seconds", "health", "restored_qemu_version")


def vm_rows(results: Sequence[Sequence[Dict[str, Any]]]) -> List[Dict[str, Any]]:
    """One row per VM from vm_save, vm_restore, vm_relaunch and vm_health results, later facts winning."""
    rows: Dict[str, Dict[str, Any]] = {}
    for result in results:
        for vm in result or []:
            name = vm.get("vm") or vm.get("name")
            if not name:
                continue
            row = rows.setdefault(name, {"vm": name})
            row.update({key: vm[key] for key in VM_FIELDS if vm.get(key) is not None})
    return list(rows.values())


class FilterModule:
    def filters(self) -> Dict[str, Callable[..., Any]]:
        return {"vm_rows": vm_rows}
