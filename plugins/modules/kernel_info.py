#!/usr/bin/python
# Copyright: liveupdate.cpr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: kernel_info
short_description: Report a hypervisor's running, installed and available kernels, and whether it can kexec
version_added: 0.1.0
description:
  - Reads the running kernel, boot id and command line, the kernels installed in C(/boot), and the kernels the
    package manager offers for the running flavour (Debian C(apt-cache), EL C(dnf repoquery)).
  - Picks the target kernel, O(version) or else the newest installed or available one, with its package name and
    its kernel and initrd paths.
  - Reports whether kexec can be used (kexec-tools present, C(kexec_load_disabled) off, no lockdown).
author:
  - liveupdate.cpr maintainers (@liveupdate-cpr)
extends_documentation_fragment:
  - liveupdate.cpr.common.read_only
options:
  version:
    description:
      - The kernel release to target, as C(uname -r) prints it (for example C(6.12.38+deb12-cloud-amd64)).
      - Empty means the newest one available for the running flavour.
    type: str
    default: ""
  cmdline_overrides:
    description:
      - Changes to the running command line for the kexec'd kernel, as a mapping of parameter to value.
      - An empty string value adds a bare flag; a null value removes the parameter. C(BOOT_IMAGE) is always removed.
    type: dict
    default: {}
  offered:
    description:
      - Whether to ask the package manager which kernels it offers. Each query costs seconds on a host with large
        package lists.
      - Set it false where only the installed kernels matter, for example to read O(version) back after its install.
        RV(available) is then empty, and without O(version) the target is the newest installed kernel.
    type: bool
    default: true
    version_added: 0.1.0
  reboot_method:
    description:
      - The reboot asked for; RV(reboot) says which one this host really gets.
    type: str
    choices: [kexec, reboot, none]
    default: kexec
  fallback_to_reboot:
    description:
      - Whether a firmware reboot may stand in for a kexec that cannot be used (RV(kexec.reasons)).
    type: bool
    default: false
"""

EXAMPLES = r"""
- name: Which kernel would this host move to?
  liveupdate.cpr.kernel_info:
  register: kernel

- name: Show it
  ansible.builtin.debug:
    msg: "{{ kernel.running }} -> {{ kernel.target }} ({{ 'kexec usable' if kernel.kexec.usable else kernel.kexec.reasons }})"
"""

RETURN = r"""
running:
  description: The running kernel release.
  type: str
  returned: always
boot_id:
  description: The current boot id; a reboot changes it.
  type: str
  returned: always
cmdline:
  description: The running kernel's command line.
  type: str
  returned: always
kexec_cmdline:
  description: The command line for the kexec'd kernel (the running one minus BOOT_IMAGE, with O(cmdline_overrides)).
  type: str
  returned: always
os_family:
  description: One of debian, redhat, unknown.
  type: str
  returned: always
flavour:
  description:
    - The running kernel's flavour, the part of its release after the version (C(cloud-amd64) in
      C(6.12.38+deb12-cloud-amd64)); the available kernels are those of this flavour.
    - Empty where the release names none (EL kernels).
  type: str
  returned: always
installed:
  description: Kernel releases in /boot; oldest first.
  type: list
  elements: str
  returned: always
available:
  description: Releases the package manager offers for the running flavour; empty with O(offered=false).
  type: list
  elements: str
  returned: always
target:
  description: The release to run after the update.
  type: str
  returned: always
target_installed:
  description: Whether the target is already in /boot.
  type: bool
  returned: always
needed:
  description: Whether the target differs from the running kernel.
  type: bool
  returned: always
newer_than_running:
  description: Whether the target sorts after the running kernel by version; false for a downgrade or the same kernel.
  type: bool
  returned: always
package:
  description: Package that installs the target.
  type: str
  returned: always
kernel_path:
  description: Path of the target's kernel image.
  type: str
  returned: always
initrd_path:
  description: Path of the target's initrd.
  type: str
  returned: always
kexec:
  description: Whether this host can kexec.
  type: dict
  returned: always
  contains:
    usable: {description: Whether kexec can be used now., type: bool, returned: always}
    binary: {description: Path of the kexec binary; null when kexec-tools is missing., type: str, returned: always}
    loaded: {description: Whether a kernel is loaded for kexec (C(/sys/kernel/kexec_loaded))., type: bool, returned: always}
    reasons: {description: Why kexec cannot be used; empty when it can., type: list, elements: str, returned: always}
systemd:
  description: Whether systemd is PID 1.
  type: bool
  returned: always
reboot:
  description:
    - The reboot this host really gets for O(reboot_method), by the rule the plan (M(liveupdate.cpr.host_plan)) uses.
    - V(kexec) where kexec can be used; otherwise V(reboot) with O(fallback_to_reboot), else V(refused).
      O(reboot_method=reboot) and O(reboot_method=none) are taken as they are.
  type: str
  returned: always
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.liveupdate.cpr.plugins.module_utils import boundary
from ansible_collections.liveupdate.cpr.plugins.module_utils.kernel import KernelOptions, kernel_facts


def main() -> None:
    module = AnsibleModule(argument_spec={"version": {"type": "str", "default": ""},
                                          "cmdline_overrides": {"type": "dict", "default": {}},
                                          "offered": {"type": "bool", "default": True},
                                          "reboot_method": {"type": "str", "default": "kexec",
                                                            "choices": ["kexec", "reboot", "none"]},
                                          "fallback_to_reboot": {"type": "bool", "default": False}},
                           supports_check_mode=True)
    boundary.run(module, kernel_facts, KernelOptions, needs_qmp=False)


if __name__ == "__main__":
    main()
