"""QEMU's packages as apt offers them, from dpkg-query and apt-get --simulate output as a trixie host prints it.

apt and dpkg themselves, on this machine, are in tests/integration/test_qemu_packages_apt.py."""

from __future__ import annotations

import subprocess

import pytest

from ansible_collections.liveupdate.cpr.plugins.module_utils import qemu_packages as qp

TRIXIE = "1:10.0.13+ds-0+deb13u1"
BACKPORTS = "1:11.1.3+ds-2~bpo13+1"
LISTING = "\n".join([
    "ii \tqemu-system-x86\tqemu\t%s" % TRIXIE,
    "ii \tqemu-system-common\tqemu\t%s" % TRIXIE,
    "ii \tqemu-system-data\tqemu\t%s" % TRIXIE,
    "rc \tqemu-utils\tqemu\t%s" % TRIXIE,            # removed, its config kept: not installed
    "ii \tseabios\tseabios\t1.16.3-2",                # QEMU needs it, but it is not QEMU's
    "ii \tlibfdt1:amd64\tdevice-tree-compiler (1.7.2-2)\t1.7.2-2",
])


def inst(package, old, new, origin="Debian Backports:trixie-backports"):
    return "Inst %s [%s] (%s %s [amd64]) []" % (package, old, new, origin)


def simulation(*lines):
    return "\n".join(["NOTE: This is only a simulation!", "Reading package lists..."] + list(lines) +
                     ["Conf qemu-system-x86 (%s Debian Backports:trixie-backports [amd64])" % BACKPORTS])


@pytest.fixture
def apt(monkeypatch):
    """dpkg-query and apt-get as a trixie host answers; the argv of each call is kept."""
    calls, answers = [], {"dpkg-query": (0, LISTING, ""), "apt-get": (0, "", "")}

    def run(argv):
        calls.append(list(argv))
        code, out, err = answers[argv[0]]
        return subprocess.CompletedProcess(argv, code, out, err)
    monkeypatch.setattr(qp, "_run", run)
    return calls, answers


def test_only_the_installed_packages_of_qemus_source_are_listed():
    assert qp.installed_qemu_packages(LISTING) == {"qemu-system-x86": TRIXIE, "qemu-system-common": TRIXIE,
                                                   "qemu-system-data": TRIXIE}


def test_the_plan_moves_exactly_those_packages_from_the_target_release(apt):
    calls, answers = apt
    answers["apt-get"] = (0, simulation(inst("qemu-system-common", TRIXIE, BACKPORTS),
                                        inst("qemu-system-data", TRIXIE, BACKPORTS),
                                        inst("qemu-system-x86", TRIXIE, BACKPORTS),
                                        "Inst libslirp0 (4.8.0-1 Debian Backports:trixie-backports [amd64])"), "")

    upgrade = qp.plan_apt("trixie-backports")

    assert calls[1] == ["apt-get", "--simulate", "--quiet", "install", "--only-upgrade", "--no-install-recommends",
                        "--target-release", "trixie-backports", "qemu-system-common", "qemu-system-data",
                        "qemu-system-x86"]
    assert upgrade.newer and upgrade.problem is None and upgrade.added == {"libslirp0": "4.8.0-1"}
    assert upgrade.line() == "QEMU 10.0.13 -> 11.1.3 from trixie-backports"
    assert upgrade.origin == "Debian Backports:trixie-backports"
    assert upgrade.as_dict()["version_after"] == "11.1.3"


def test_no_newer_qemu_on_offer_is_a_line_of_the_plan_not_a_failure(apt):
    _calls, answers = apt
    answers["apt-get"] = (0, simulation("qemu-system-x86 is already the newest version (%s)." % TRIXIE), "")

    upgrade = qp.plan_apt()

    assert not upgrade.newer and upgrade.problem is None
    assert upgrade.line() == "QEMU 10.0.13: no newer QEMU on offer"


def test_what_apt_cannot_do_is_a_problem_in_apts_words(apt):
    _calls, answers = apt
    answers["apt-get"] = (100, "The following packages have unmet dependencies:\n qemu-system-x86 : Depends: "
                               "qemu-system-common (= 1:11.1.3+ds-2~bpo13+1) but 1:10.0.13+ds-0+deb13u1 is to be "
                               "installed\n", "E: Unable to correct problems, you have held broken packages.")

    upgrade = qp.plan_apt("trixie-backports")

    assert "Depends: qemu-system-common (= 1:11.1.3+ds-2~bpo13+1)" in upgrade.problem
    assert "held broken packages" in upgrade.problem
    assert upgrade.line().startswith("QEMU: apt cannot update it from trixie-backports: ")


def test_a_package_the_target_release_lacks_would_split_qemu_and_is_a_problem(apt):
    _calls, answers = apt
    answers["apt-get"] = (0, simulation(inst("qemu-system-common", TRIXIE, BACKPORTS),
                                        inst("qemu-system-x86", TRIXIE, BACKPORTS)), "")

    upgrade = qp.plan_apt("trixie-backports")

    assert upgrade.problem == ("qemu-system-data would stay at 10.0.13 while qemu-system-common moves to 11.1.3: "
                               "trixie-backports does not offer it")


def test_the_operators_list_narrows_the_packages_and_never_adds_one(apt):
    calls, answers = apt
    answers["apt-get"] = (0, simulation(inst("qemu-system-x86", TRIXIE, BACKPORTS)), "")

    upgrade = qp.plan_apt("", only=["qemu-system-x86", "qemu-utils"])

    assert upgrade.packages == ["qemu-system-x86"] and calls[1][-1] == "qemu-system-x86"


def test_a_host_without_qemu_packages_asks_apt_nothing(apt):
    calls, answers = apt
    answers["dpkg-query"] = (0, "ii \tbash\tbash\t5.2.37-2", "")

    upgrade = qp.plan_apt("trixie-backports")

    assert upgrade.packages == [] and len(calls) == 1 and upgrade.line() == "QEMU: no QEMU package installed"


@pytest.mark.parametrize("version, shown", [(BACKPORTS, "11.1.3"), ("1:10.0.2+ds-2+deb13u1~bpo12+1", "10.0.2"),
                                            ("8.2.2-1ubuntu1", "8.2.2"), ("", "")])
def test_the_version_shown_is_what_qemu_reports(version, shown):
    assert qp.upstream(version) == shown
