"""Batches as serial and order form them: the printed plan and each host's batch number come from here."""

from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.liveupdate.cpr.plugins.filter.batches import batch_of, batches

HOSTS = ["hv2", "hv10", "hv1", "hv3"]  # inventory order, not name order


@pytest.mark.parametrize(("order", "expected"), [
    ("inventory", [["hv2"], ["hv10", "hv1"], ["hv3"]]),
    ("reverse_inventory", [["hv3"], ["hv1", "hv10"], ["hv2"]]),
    ("sorted", [["hv1"], ["hv10", "hv2"], ["hv3"]]),         # by name, as Ansible sorts: hv10 before hv2
    ("reverse_sorted", [["hv3"], ["hv2", "hv10"], ["hv1"]]),
])
def test_each_order(order, expected):
    assert batches(HOSTS, [1, 2], order) == expected
    for number, batch in enumerate(expected, start=1):
        assert all(batch_of(HOSTS, host, [1, 2], order) == number for host in batch)


def test_percentages_and_a_repeating_last_step():
    assert batches(["a", "b", "c", "d", "e"], [1, "50%"]) == [["a"], ["b", "c"], ["d", "e"]]
    assert batches(["a", "b", "c"], 0) == [["a", "b", "c"]]


def test_shuffle_cannot_be_planned():
    with pytest.raises(AnsibleFilterError, match="unseeded"):
        batches(HOSTS, 1, "shuffle")
    with pytest.raises(AnsibleFilterError, match="not one of"):
        batches(HOSTS, 1, "random")
