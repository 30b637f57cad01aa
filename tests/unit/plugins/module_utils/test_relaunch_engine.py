"""vm_relaunch restarts QEMU only: a reboot_method that promises a reboot is refused, not ignored."""

from __future__ import annotations

import pytest

from ansible_collections.liveupdate.cpr.plugins.module_utils import relaunch
from ansible_collections.liveupdate.cpr.plugins.module_utils.errors import CprError
from ansible_collections.liveupdate.cpr.plugins.module_utils.relaunch import RelaunchOptions, relaunch_host


@pytest.mark.parametrize("method", ["kexec", "reboot"])
def test_a_reboot_method_other_than_none_is_refused_before_any_vm_is_looked_at(tmp_path, monkeypatch, method):
    def no_discovery(*_args, **_kwargs):
        pytest.fail("relaunch_host looked for VMs despite reboot_method=%s" % method)
    monkeypatch.setattr(relaunch, "select", no_discovery)

    with pytest.raises(CprError) as refused:
        relaunch_host(RelaunchOptions(state_dir=str(tmp_path / "state"), reboot_method=method))

    assert "reboot_method=%s" % method in str(refused.value)
    assert "vm_save" in str(refused.value.fix)
