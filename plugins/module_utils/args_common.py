# Copyright: liveupdate.cpr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The argument specs the modules share; doc_fragments/common.py documents them."""

from __future__ import annotations

from typing import Any, Dict

from ansible_collections.liveupdate.cpr.plugins.module_utils.guest_agent import SUSPEND_POLICIES, TIME_SYNC_POLICIES
from ansible_collections.liveupdate.cpr.plugins.module_utils.journal import DEFAULT_STATE_DIR
from ansible_collections.liveupdate.cpr.plugins.module_utils.ram_verdict import RAM_POLICIES, REBOOT_METHODS

SCOPE_ARGS: Dict[str, Any] = {
    "vms": {"type": "list", "elements": "str", "default": []},
    "state_dir": {"type": "path", "default": DEFAULT_STATE_DIR},
    "timeout": {"type": "int", "default": 600},
}

SELECTION_ARGS: Dict[str, Any] = {
    "qmp_dir": {"type": "path"},
}

RAM_ARGS: Dict[str, Any] = {
    "reboot_method": {"type": "str", "choices": list(REBOOT_METHODS), "default": "kexec"},
    "ram_policy": {"type": "str", "choices": list(RAM_POLICIES), "default": "fail"},
    "ram_policy_per_vm": {"type": "dict", "default": {}},
    "persistent_paths": {"type": "list", "elements": "path", "default": []},
}


GUEST_ARGS: Dict[str, Any] = {
    "guest_time_sync": {"type": "str", "choices": list(TIME_SYNC_POLICIES), "default": "auto"},
    "guest_time_sync_per_vm": {"type": "dict", "default": {}},
}


SUSPEND_ARGS: Dict[str, Any] = {
    "guest_suspend": {"type": "str", "choices": list(SUSPEND_POLICIES), "default": "auto"},
    "guest_suspend_per_vm": {"type": "dict", "default": {}},
}


# vm_health's own; agent_ping's choices are health.AGENT_PING_POLICIES
HEALTH_ARGS: Dict[str, Any] = {
    "agent_ping": {"type": "str", "choices": ["auto", "required", "off"], "default": "auto"},
    "agent_timeout": {"type": "int", "default": 30},
    "guest_command": {"type": "list", "elements": "str", "default": []},
    "host_command": {"type": "list", "elements": "str", "default": []},
    "command_timeout": {"type": "int", "default": 120},
    "per_vm": {"type": "dict", "default": {}},
}


def spec(*parts: Dict[str, Any], **extra: Any) -> Dict[str, Any]:
    merged: Dict[str, Any] = {}
    for part in parts:
        merged.update(part)
    merged.update(extra)
    return merged
