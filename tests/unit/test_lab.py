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
