"""One rule for "this path lies in that tree", used by scope, save and the RAM verdict."""

from __future__ import annotations

import os

from ansible_collections.liveupdate.cpr.plugins.module_utils.paths import is_under


def test_below_or_the_root_itself_but_not_a_sibling_with_the_same_prefix(tmp_path):
    root = tmp_path / "vms"
    assert is_under(str(root / "web1.qmp"), str(root))
    assert is_under(str(root), str(root) + "/")
    assert not is_under(str(tmp_path / "vms-old" / "web1.qmp"), str(root))
    assert is_under("/anything", "/")


def test_symlinks_are_resolved_on_both_sides(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    os.symlink(real, tmp_path / "link")
    assert is_under(str(tmp_path / "link" / "ram"), str(real))
    assert is_under(str(real / "ram"), str(tmp_path / "link"))


def test_any_of_several_roots():
    assert is_under("/srv/pmem/vm.ram", "/dev/dax0.0", "/srv/pmem")
    assert not is_under("/srv/pmem/vm.ram")
