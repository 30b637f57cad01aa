"""Benchmark: cpr-reboot save/restore figures, measured side by side in one run.

Not a test: it asserts nothing about speed. It prints a Markdown table and
writes it to bench/results/latest.md, for the README.

1. One VM with 1 GiB of RAM filled with non-zero data: x-ignore-shared
   (RAM stays in its shared file) against RAM written into the state file
   (what libvirt's managedsave does).
2. 8 VMs saved and restored concurrently against one after another.
3. The blackout of one VM under vm_relaunch (one task) against vm_save
   followed by vm_restore (two Ansible tasks).
4. The same vm_relaunch for a real Debian guest (lab.linux_guest: virtio-blk,
   virtio-net, its agent, whose clock is set after the RESUME), next to the
   boot-sector test guest of 3.
5. The boot unit's own part at this machine's top level: two VMs saved for a
   planned kexec, then the entry point that restore_unit installs, run as on
   that kexec's boot (lab.planned_boot), from its process start to the last
   VM's RESUME. In the kexec lab the same part runs under double emulation.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / ".dev-collections")]

from ansible_collections.liveupdate.cpr.plugins.module_utils import boot_restore  # noqa: E402
from ansible_collections.liveupdate.cpr.plugins.module_utils.restore import RestoreOptions, restore_host  # noqa: E402
from ansible_collections.liveupdate.cpr.plugins.module_utils.save import SaveOptions, save_host  # noqa: E402
from lab.linux_guest import LinuxVm, ensure_image  # noqa: E402
from lab.planned_boot import allow_restore_at_boot, host_venv, run_entry_point  # noqa: E402
from lab.testvm import TestVm, guest_disk, kill_all, probe, qemu_available  # noqa: E402

REPEATS = int(os.environ.get("BENCH_REPEATS", "3"))
INVENTORY = ROOT / "tests" / "integration" / "inventory.yml"


def timed(work: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = work()
    return time.perf_counter() - start, result


def check_resumed(vm: TestVm, nonce: int) -> None:
    state = probe(vm)
    if state.nonce != nonce or not state.pattern_ok:
        raise SystemExit("benchmark VM %s did not resume intact: %r" % (vm.name, state))


def big_vm(base: Path, disk: Path) -> List[Dict[str, Any]]:
    rows = []
    vm = TestVm("big", base / "qmp", disk, ram_mb=1024).start()
    nonce = vm.wait_booted(timeout=120).nonce
    state_dir = base / "state"
    for label, method, policy in (("x-ignore-shared (RAM stays in place)", "none", "fail"),
                                  ("RAM in the state file (managedsave-like)", "kexec", "save_ram")):
        saves, restores, sizes, blackouts = [], [], [], []
        for _run in range(REPEATS):
            save_s, saved = timed(lambda m=method, p=policy: save_host(SaveOptions(
                qmp_dir=str(vm.qmp_dir), state_dir=str(state_dir), reboot_method=m, ram_policy=p)))
            restore_s, restored = timed(lambda: restore_host(RestoreOptions(state_dir=str(state_dir))))
            saves.append(save_s)
            restores.append(restore_s)
            sizes.append(saved["vms"][0]["state_size"])
            blackouts.append(restored["vms"][0]["blackout_seconds"])
            check_resumed(vm, nonce)
        rows.append({"case": "1 GiB VM, " + label, "save_s": statistics.median(saves),
                     "restore_s": statistics.median(restores), "state_bytes": statistics.median(sizes),
                     "blackout_s": statistics.median(blackouts)})
    kill_all(vm.qmp_dir)
    return rows


def many_vms(base: Path, disk: Path, count: int = 8) -> List[Dict[str, Any]]:
    qmp_dir, state_dir = base / "many", base / "many-state"
    vms = [TestVm("m%d" % i, qmp_dir, disk).start() for i in range(count)]
    nonces = {vm.name: vm.wait_booted().nonce for vm in vms}
    rows = []
    for label in ("concurrently (one call)", "one after another"):
        saves, restores, blackouts = [], [], []
        for _run in range(REPEATS):
            if label.startswith("concurrently"):
                save_s, _saved = timed(lambda: save_host(SaveOptions(qmp_dir=str(qmp_dir), state_dir=str(state_dir),
                                                                     reboot_method="none")))
                restore_s, restored = timed(lambda: restore_host(RestoreOptions(state_dir=str(state_dir))))
                blackouts.extend(vm["blackout_seconds"] for vm in restored["vms"])
            else:
                save_s = restore_s = 0.0
                for vm in vms:
                    seconds, _saved = timed(lambda name=vm.name: save_host(SaveOptions(
                        qmp_dir=str(qmp_dir), vms=[name], state_dir=str(state_dir), reboot_method="none")))
                    save_s += seconds
                for vm in vms:
                    seconds, restored = timed(lambda name=vm.name: restore_host(RestoreOptions(
                        vms=[name], state_dir=str(state_dir))))
                    restore_s += seconds
                    blackouts.extend(v["blackout_seconds"] for v in restored["vms"] if v["action"] == "restored")
            saves.append(save_s)
            restores.append(restore_s)
            for vm in vms:
                check_resumed(vm, nonces[vm.name])
        rows.append({"case": "%d VMs of 64 MiB, %s" % (count, label), "save_s": statistics.median(saves),
                     "restore_s": statistics.median(restores), "state_bytes": None,
                     "blackout_s": statistics.median(blackouts)})
    kill_all(qmp_dir)
    return rows


def ansible(args: List[str]) -> List[Dict[str, Any]]:
    with tempfile.NamedTemporaryFile(suffix=".jsonl") as log:
        env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), RESULT_LOG=log.name,
                   ANSIBLE_CALLBACK_PLUGINS=str(ROOT / "tests" / "callback_plugins"),
                   ANSIBLE_CALLBACKS_ENABLED="result_log", ANSIBLE_LOAD_CALLBACK_PLUGINS="1")
        subprocess.run(args, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
        return [json.loads(line)["result"] for line in Path(log.name).read_text().splitlines()]


def blackout_by_path(base: Path, disk: Path) -> List[Dict[str, Any]]:
    qmp_dir, state_dir = base / "one", base / "one-state"
    vm = TestVm("solo", qmp_dir, disk).start()
    nonce = vm.wait_booted().nonce
    playbook = base / "two-tasks.yml"
    playbook.write_text(
        "- hosts: localhost\n  gather_facts: false\n  tasks:\n"
        "    - liveupdate.cpr.vm_save: {qmp_dir: %s, state_dir: %s, reboot_method: none}\n"
        "    - liveupdate.cpr.vm_restore: {state_dir: %s}\n" % (qmp_dir, state_dir, state_dir))
    binary = Path(sys.executable).parent
    relaunch, two_tasks = [], []
    for _run in range(REPEATS):
        result = ansible([str(binary / "ansible"), "localhost", "-i", str(INVENTORY), "-m", "liveupdate.cpr.vm_relaunch",
                          "-a", json.dumps({"qmp_dir": str(qmp_dir), "state_dir": str(state_dir), "force": True})])
        relaunch.append(result[-1]["vms"][0]["blackout_seconds"])
        result = ansible([str(binary / "ansible-playbook"), "-i", str(INVENTORY), str(playbook)])
        two_tasks.append(result[-1]["vms"][0]["blackout_seconds"])
        check_resumed(vm, nonce)
    kill_all(qmp_dir)
    return [{"case": "1 VM, vm_relaunch (one task)", "blackout_s": statistics.median(relaunch)},
            {"case": "1 VM, vm_save + vm_restore (two tasks)", "blackout_s": statistics.median(two_tasks)}]


def real_guest_relaunch(base: Path) -> List[Dict[str, Any]]:
    qmp_dir, state_dir = base / "real", base / "real-state"
    vm = LinuxVm("debian", qmp_dir, ensure_image()).start()
    try:
        vm.wait_booted()
        boot_id = vm.facts()["boot_id"]
        binary = Path(sys.executable).parent
        blackouts, syncs = [], []
        for _run in range(REPEATS):
            result = ansible([str(binary / "ansible"), "localhost", "-i", str(INVENTORY), "-m",
                              "liveupdate.cpr.vm_relaunch", "-a", json.dumps({
                                  "qmp_dir": str(qmp_dir), "state_dir": str(state_dir), "force": True})])
            blackouts.append(result[-1]["vms"][0]["blackout_seconds"])
            syncs.append(result[-1]["vms"][0]["guest_clock"]["seconds"])
            assert vm.facts()["boot_id"] == boot_id, "the guest rebooted"
    finally:
        kill_all(qmp_dir)
        Path(vm.ram_path).unlink(missing_ok=True)
    return [{"case": "1 real Debian guest (virtio-blk, virtio-net, agent), vm_relaunch (one task); its clock "
                     "sync after the RESUME took %.2f s" % statistics.median(syncs),
             "blackout_s": statistics.median(blackouts)}]


def boot_unit_part(base: Path, disk: Path) -> List[Dict[str, Any]]:
    """5. Unit start (here: the entry point's process start) to the last RESUME, for a host of two VMs."""
    venv = host_venv(base / "unit-venv")
    parts = []
    for run in range(REPEATS):
        host = base / ("unit-host-%d" % run)
        qmp_dir, state_dir = host / "qmp", host / "state"
        vms = [TestVm("unit%d" % index, qmp_dir, disk).start() for index in (1, 2)]
        nonces = {vm.name: vm.wait_booted().nonce for vm in vms}
        boot_restore.ensure(boot_restore.UnitOptions(venv=str(venv), state_dir=str(state_dir), mint_token=True))
        token = allow_restore_at_boot(state_dir)["token"]
        # their RAM files on /dev/shm stand in for a devdax device: this machine never really reboots
        saved = save_host(SaveOptions(qmp_dir=str(qmp_dir), state_dir=str(state_dir), reboot_method="kexec",
                                      persistent_paths=["/dev/shm"]))
        if not saved["restore_token_armed"]:
            raise SystemExit("the save armed no restore token: another QEMU runs on this machine")
        started = time.time()
        unit = run_entry_point(venv, state_dir, token, host)
        if unit.returncode != 0:
            raise SystemExit("the boot unit's entry point failed: %s%s" % (unit.stdout, unit.stderr))
        resumed = [json.loads((state_dir / (vm.name + ".json")).read_text())["resumed_at"] for vm in vms]
        parts.append(max(resumed) - started)
        for vm in vms:
            check_resumed(vm, nonces[vm.name])
        kill_all(host)
    return [{"case": "boot unit, 2 VMs: entry point start to last RESUME (the lab's \"ours\")",
             "restore_s": statistics.median(parts)}]


def fmt(value: Any, unit: str = "s") -> str:
    if value is None:
        return "-"
    if unit == "bytes":
        return f"{int(value):,}"
    return "%.3f" % value


def main() -> int:
    qemu_available()
    disk = guest_disk(ROOT / "build" / "cache")
    base = Path(tempfile.mkdtemp(prefix="lu-bench-", dir="/tmp"))
    try:
        # the boot unit's first: its save arms the restore token only with no other QEMU running on the machine
        rows = (boot_unit_part(base, disk) + big_vm(base, disk) + many_vms(base, disk) + blackout_by_path(base, disk)
                + real_guest_relaunch(base))
    finally:
        kill_all(base)
        shutil.rmtree(base, ignore_errors=True)
    qemu = subprocess.run([shutil.which("qemu-system-x86_64") or "qemu-system-x86_64", "--version"],
                          capture_output=True, text=True, check=True).stdout.splitlines()[0]
    heading = "Measured %s on %s, %d CPUs, %s, TCG; median of %d runs each." % (
        time.strftime("%Y-%m-%d"), platform.node(), os.cpu_count() or 0, qemu, REPEATS)
    lines = [heading, "", "| case | save (s) | restore (s) | state file (bytes) | blackout (s) |", "|---|---:|---:|---:|---:|"]
    for row in rows:
        cells = (row["case"], fmt(row.get("save_s")), fmt(row.get("restore_s")), fmt(row.get("state_bytes"), "bytes"),
                 fmt(row.get("blackout_s")))
        lines.append("| %s | %s | %s | %s | %s |" % cells)
    table = "\n".join(lines)
    print(table)
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "latest.md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
