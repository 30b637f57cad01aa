#!/usr/bin/python
# Copyright: liveupdate.cpr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: vm_health
short_description: Health gates for the VMs of a host after its update
version_added: 0.1.0
description:
  - Checks that each running VM in scope is alive after its resume, and fails when one is not, so that a rolling
    rollout stops before its next batch, as kured and FleetLock gate each next node on the health of the last.
  - Every VM keeps running, whatever the gates find; the module only looks.
  - "Per VM, in this order: its guest agent answers C(guest-ping) within O(agent_timeout) seconds (O(agent_ping));
    the operator's O(guest_command) runs in the guest through the agent (C(guest-exec)) and exits 0; the operator's
    O(host_command) runs on the host and exits 0."
  - A VM that is paused or suspended (as it was before its save) is skipped, since its guest cannot answer.
  - A VM named in O(vms) that does not run (its journal record says it is saved) fails its gates.
  - The VMs are checked side by side.
author:
  - liveupdate.cpr maintainers (@liveupdate-cpr)
extends_documentation_fragment:
  - liveupdate.cpr.common
  - liveupdate.cpr.common.selection
options:
  agent_ping:
    description:
      - "V(auto) pings the agent of each VM that has an agent channel (see O(guest_command)), and passes a VM without
        one as C(skipped: no agent). A channel whose agent does not answer fails the gate."
      - V(required) also fails a VM that has no agent channel.
      - V(off) pings no agent.
    type: str
    choices: [auto, required, "off"]
    default: auto
  agent_timeout:
    description: Seconds each agent has to answer C(guest-ping), asked again every half second until then.
    type: int
    default: 30
  guest_command:
    description:
      - An argv run in each guest through its agent's C(guest-exec) (the agent searches the guest's C(PATH)), for
        example C([systemctl, is-system-running, --wait]). It must exit 0 within O(command_timeout) seconds.
      - It needs the VM's agent channel, the unix socket chardev (C(server=on)) behind
        C(-device virtserialport,name=org.qemu.guest_agent.0), with C(qemu-guest-agent) running in the guest and
        allowed to run C(guest-exec).
      - Empty runs nothing.
    type: list
    elements: str
    default: []
  host_command:
    description:
      - An argv run on the host for each VM, never through a shell, for example a probe of the VM's service from
        outside. It must exit 0 within O(command_timeout) seconds.
      - Its environment names the VM, C(LIVEUPDATE_CPR_VM), C(LIVEUPDATE_CPR_PID) (its QEMU),
        C(LIVEUPDATE_CPR_QMP) (its QMP socket) and C(LIVEUPDATE_CPR_AGENT) (its agent channel, or empty).
      - Empty runs nothing.
    type: list
    elements: str
    default: []
  command_timeout:
    description: Seconds O(guest_command) and O(host_command) each have to exit; O(timeout) caps it too.
    type: int
    default: 120
  per_vm:
    description:
      - Per-VM gates, as a mapping of VM name to a mapping of any of C(agent_ping), C(guest_command) and
        C(host_command), which replace the module's values for that VM (see the examples).
    type: dict
    default: {}
notes:
  - Output of the commands is reported in C(detail), its last 300 characters.
attributes:
  check_mode:
    description: Runs no gate; reports the gates each VM would get.
    support: full
  diff_mode:
    description: Nothing changes, so there is no diff.
    support: none
  idempotent:
    description: It changes nothing.
    support: full
seealso:
  - module: liveupdate.cpr.vm_restore
  - module: liveupdate.cpr.vm_relaunch
"""

EXAMPLES = r"""
- name: Gate the next batch on every guest being up, and on the web VMs answering
  liveupdate.cpr.vm_health:
    qmp_dir: /run/qemu
    agent_ping: required
    guest_command: [systemctl, is-system-running, --wait]
    per_vm:
      web1:
        host_command: [curl, --fail, --silent, --max-time, "5", "http://web1.example.net/health"]
"""

RETURN = r"""
vms:
  description: One entry per VM in scope.
  returned: always
  type: list
  elements: dict
  contains:
    vm: {description: VM name., type: str, returned: always}
    status: {description: "QEMU run state, or C(down) for a VM that does not run.", type: str, returned: always}
    health:
      description:
        - "C(passed): whether every gate passed (null in check mode)."
        - "C(gates): one entry per gate, C(gate) (agent_ping, guest_command, host_command or status), C(passed),
          C(skipped), C(detail) (what the gate saw, or why it failed) and C(seconds) spent."
        - "C(planned), in check mode: the gates the VM would get."
      type: dict
      returned: always
failed_vms:
  description: Names of the VMs whose gates failed.
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.liveupdate.cpr.plugins.module_utils import boundary
from ansible_collections.liveupdate.cpr.plugins.module_utils.args_common import HEALTH_ARGS, SCOPE_ARGS, SELECTION_ARGS, spec
from ansible_collections.liveupdate.cpr.plugins.module_utils.health import HealthOptions, check_host


def main() -> None:
    module = AnsibleModule(argument_spec=spec(SCOPE_ARGS, SELECTION_ARGS, HEALTH_ARGS), supports_check_mode=True)
    boundary.run(module, check_host, HealthOptions)


if __name__ == "__main__":
    main()
