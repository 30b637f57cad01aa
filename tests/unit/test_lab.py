"""The lab's own pieces that other files depend on."""

from __future__ import annotations

from pathlib import Path

import yaml

from lab import fleet

ROOT = Path(__file__).resolve().parent.parent.parent


def test_molecule_inventory_is_the_lab_inventory():
    committed = yaml.safe_load((ROOT / "molecule" / "default" / "inventory.yml").read_text())
    assert committed == fleet.inventory("{{ lookup('env', 'LIVEUPDATE_LAB') }}", 6,
                                        "{{ lookup('env', 'MOLECULE_PROJECT_DIRECTORY') }}")


def test_kexec_molecule_inventory_is_the_host_lab_inventory():
    from lab.host import fleet as host_fleet

    committed = yaml.safe_load((ROOT / "molecule" / "kexec" / "inventory.yml").read_text())
    assert committed == host_fleet.inventory(
        [("hv1", 42301), ("hv2", 42302), ("hv3", 42303)],
        "/tmp/liveupdate-molecule-kexec/ssh/id_ed25519", ["hv3"])


def test_lab_pmem_ranges_of_nested_vms_do_not_overlap():
    from lab.host import inside

    argvs = [inside.vm_argv("hv1-vm%d" % i, 16, "dax", (i - 1) * 16) for i in (1, 2, 3)]
    offsets = [next(arg for arg in argv if arg.startswith("memory-backend-file")).split("offset=")[1] for argv in argvs]
    assert offsets == ["0M", "16M", "32M"]
