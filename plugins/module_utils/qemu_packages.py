# Copyright: liveupdate.cpr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The QEMU packages a host has, and what apt would move them to, asked before anything is paused.

Exactly the installed packages built from Debian's ``qemu`` source move (a
package the host never had is not added), to what apt offers from the target
release: backports are ``NotAutomatic``, so without one apt stays on the
release's own QEMU. ``apt-get --simulate`` answers with apt's own resolver, so
a package the release lacks or a dependency it cannot meet is found in the
fleet-wide preflight, not in batch 1's stage.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ansible_collections.liveupdate.cpr.plugins.module_utils.errors import CprError

QEMU_SOURCE = "qemu"
# Inst qemu-system-x86 [1:10.0.13+ds-0+deb13u1] (1:11.1.3+ds-2~bpo13+1 Debian Backports:trixie-backports [amd64])
INST = re.compile(r"^Inst (?P<package>\S+) (?:\[(?P<old>[^\]]+)\] )?\((?P<new>\S+) (?P<origin>[^\[]*?)\s*\[")
APT_TIMEOUT = 120


class PackageError(CprError):
    """The package database could not be read."""


@dataclass
class QemuUpgrade:
    """What the package update of QEMU would do on this host."""

    target_release: str
    installed: Dict[str, str] = field(default_factory=dict)       # QEMU's installed packages: version
    moves: Dict[str, Tuple[str, str]] = field(default_factory=dict)  # every upgrade apt plans: (from, to)
    added: Dict[str, str] = field(default_factory=dict)           # packages apt would newly install: version
    origin: str = ""
    problem: Optional[str] = None                                  # why apt could not do it

    @property
    def packages(self) -> List[str]:
        return sorted(self.installed)

    @property
    def newer(self) -> bool:
        return any(package in self.moves for package in self.installed)

    def version_before(self) -> str:
        return upstream(self._main(self.installed))

    def version_after(self) -> str:
        return upstream(self._main({p: moved[1] for p, moved in self.moves.items() if p in self.installed}))

    @staticmethod
    def _main(versions: Dict[str, str]) -> str:
        """The version of the system emulator, or of any QEMU package when there is none."""
        for package in sorted(versions, key=lambda p: (not p.startswith("qemu-system-"), p)):
            return versions[package]
        return ""

    def line(self) -> str:
        where = " from %s" % self.target_release if self.target_release else ""
        if self.problem:
            return "QEMU: apt cannot update it%s: %s" % (where, self.problem)
        if not self.installed:
            return "QEMU: no QEMU package installed"
        if not self.newer:
            return "QEMU %s: no newer QEMU on offer%s" % (self.version_before(), where)
        return "QEMU %s -> %s%s" % (self.version_before(), self.version_after(), where)

    def as_dict(self) -> Dict[str, Any]:
        found = asdict(self)
        found.update(packages=self.packages, newer=self.newer, version_before=self.version_before(),
                     version_after=self.version_after() if self.newer else self.version_before(), line=self.line())
        return found


def upstream(version: str) -> str:
    """1:11.1.3+ds-2~bpo13+1 -> 11.1.3: what QEMU itself reports over QMP."""
    return re.split(r"[+~-]", version.split(":", 1)[-1], maxsplit=1)[0] if version else ""


def _run(argv: Sequence[str]) -> subprocess.CompletedProcess:  # type: ignore[type-arg]
    try:
        return subprocess.run(list(argv), capture_output=True, text=True, timeout=APT_TIMEOUT, check=False,
                              env={"LC_ALL": "C", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PackageError("%s could not run: %s" % (argv[0], exc)) from exc


def installed_qemu_packages(listing: str) -> Dict[str, str]:
    """From dpkg-query's "status<TAB>package<TAB>source<TAB>version" lines: the installed packages of QEMU's source."""
    found = {}
    for line in listing.splitlines():
        parts = line.split("\t")
        if len(parts) != 4:
            continue
        status, package, source, version = parts
        source = source.split(" ", 1)[0] or package
        if status.startswith("ii") and source == QEMU_SOURCE:
            found[package.split(":", 1)[0]] = version
    return found


def parse_simulation(output: str, upgrade: QemuUpgrade) -> None:
    for line in output.splitlines():
        match = INST.match(line)
        if not match:
            continue
        if match.group("old"):
            upgrade.moves[match.group("package")] = (match.group("old"), match.group("new"))
            if match.group("package") in upgrade.installed:
                upgrade.origin = match.group("origin").strip()
        else:
            upgrade.added[match.group("package")] = match.group("new")


def apt_problem(output: str) -> str:
    """apt's own words for why it would not do it, as short as they stay clear."""
    errors = [line[3:].strip() for line in output.splitlines() if line.startswith("E: ")]
    unmet = [line.strip() for line in output.splitlines() if "Depends:" in line or "Breaks:" in line]
    return "; ".join(unmet[:3] + errors[:2]) or output.strip().splitlines()[-1] if output.strip() else "apt failed"


def plan_apt(target_release: str = "", only: Sequence[str] = ()) -> QemuUpgrade:
    """What ``apt-get install --only-upgrade [-t RELEASE] <QEMU's installed packages>`` would do, simulated."""
    listing = _run(["dpkg-query", "-W", "-f", "${db:Status-Abbrev}\t${Package}\t${source:Package}\t${Version}\n"])
    if listing.returncode != 0:
        raise PackageError("dpkg-query could not list the installed packages: %s" % listing.stderr.strip())
    upgrade = QemuUpgrade(target_release, installed=installed_qemu_packages(listing.stdout))
    if only:
        # the operator's list, as far as the host has those packages: none is added
        upgrade.installed = {p: v for p, v in upgrade.installed.items() if p in only}
    if not upgrade.installed:
        return upgrade
    argv = ["apt-get", "--simulate", "--quiet", "install", "--only-upgrade", "--no-install-recommends"]
    if target_release:
        argv += ["--target-release", target_release]
    simulated = _run(argv + upgrade.packages)
    if simulated.returncode != 0:
        upgrade.problem = apt_problem(simulated.stdout + "\n" + simulated.stderr)
        return upgrade
    parse_simulation(simulated.stdout, upgrade)
    left = [p for p in upgrade.packages if p not in upgrade.moves]
    moved = [p for p in upgrade.packages if p in upgrade.moves]
    if moved and left:
        # QEMU's packages come from one build: half of them moved is a QEMU no one tested
        upgrade.problem = "%s would stay at %s while %s moves to %s: %s does not offer %s" % (
            ", ".join(left), upstream(upgrade.installed[left[0]]), moved[0], upgrade.version_after(),
            upgrade.target_release or "the host's sources", "them" if len(left) > 1 else "it")
    return upgrade
