"""The lab's own pieces that other files depend on."""

from __future__ import annotations

from pathlib import Path

import yaml

from lab import local_fleet as fleet

ROOT = Path(__file__).resolve().parents[3]


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


def test_report_blackout_must_match_the_guests_own_stall():
    from lab.host.evidence import stall_agreement
    resumed_at = 1_700_000_000.4        # 22:13:20.4 UTC
    reported = {"blackout_seconds": 116.2, "resumed_at": resumed_at}
    seen = {"longest_stall": 116, "longest_stall_ended": int(resumed_at) % 86400}
    assert stall_agreement(reported, seen)["ok"]
    # the clock is a second coarse and may start a second behind the host's
    assert stall_agreement(reported, dict(seen, longest_stall=115, longest_stall_ended=seen["longest_stall_ended"] - 2))["ok"]
    # its first pass after the RESUME 2.8 s late on a starved host (molecule kexec, 2026-12-06): 148 s for 144.52 s
    late = {"blackout_seconds": 144.52, "resumed_at": resumed_at}
    assert stall_agreement(late, {"longest_stall": 148, "longest_stall_ended": (int(resumed_at) + 3) % 86400})["ok"]
    assert not stall_agreement(late, {"longest_stall": 148, "longest_stall_ended": int(resumed_at) % 86400})["ok"]
    short = stall_agreement(reported, dict(seen, longest_stall=60))
    assert not short["ok"] and "60 s" in short["why"]
    elsewhere = stall_agreement(reported, dict(seen, longest_stall_ended=seen["longest_stall_ended"] - 600))
    assert not elsewhere["ok"]
    # a blackout across midnight, UTC
    midnight = {"blackout_seconds": 10.0, "resumed_at": 1_700_006_400.5}   # 00:00:00.5 UTC
    assert stall_agreement(midnight, {"longest_stall": 10, "longest_stall_ended": 86399})["ok"]
    assert not stall_agreement({}, seen)["ok"]
