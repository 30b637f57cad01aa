"""The test guest's RAM pattern check, which every restore assertion relies on."""

from __future__ import annotations

from lab.guest_probe import PATTERN_BASE, check_pattern


def test_complete_pass_and_pass_under_way_are_consistent():
    counter = 10
    base = (PATTERN_BASE + counter) & 0xFF
    assert check_pattern(bytes([base] * 8), counter)[0]
    assert check_pattern(bytes([base + 1] * 3 + [base] * 5), counter)[0]


def test_a_lost_page_or_a_wrong_counter_is_caught():
    counter = 10
    base = (PATTERN_BASE + counter) & 0xFF
    ok, detail = check_pattern(bytes([base] * 4 + [0] + [base] * 3), counter)
    assert not ok and "page 4" in detail
    assert not check_pattern(bytes([base] * 8), counter + 3)[0]
    assert not check_pattern(bytes([base + 1, base, base + 1, base]), counter)[0]
