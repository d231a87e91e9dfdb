"""The loadbalancing exporter's memory of where each key went (affinity.py), against a dict model."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_sre.exporters.loadbalancing.affinity import NONE, Affinity, outage_began

ENDPOINTS = ["gw-a:4317", "gw-b:4317", "gw-c:4317"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.lists(st.integers(0, 40), max_size=12), st.sampled_from(ENDPOINTS)), max_size=20),
       st.lists(st.integers(0, 45), max_size=30))
def test_a_key_is_found_at_its_latest_backend_within_the_window(records, asked):
    affinity, model = Affinity(window_s=60), {}
    for t, (keys, endpoint) in enumerate(records):
        affinity.record(np.array(keys, np.uint32), endpoint, now=float(t))  # all within one window
        model.update(dict.fromkeys(keys, endpoint))
        if t % 3 == 2:  # looked up between records too: merged into the sorted arrays in steps
            got = affinity.lookup(np.array(asked, np.uint32), float(t), ENDPOINTS)
            assert got.tolist() == [ENDPOINTS.index(model[k]) if k in model else NONE for k in asked]
    got = affinity.lookup(np.array(asked, np.uint32), 30.0, ENDPOINTS)
    assert got.tolist() == [ENDPOINTS.index(model[k]) if k in model else NONE for k in asked]


def test_a_key_is_kept_one_to_two_windows_from_its_assignment_then_forgotten():
    affinity = Affinity(window_s=10)
    affinity.record(np.array([1], np.uint32), "gw-a:4317", now=0.0)
    affinity.record(np.array([2], np.uint32), "gw-b:4317", now=9.0)
    assert affinity.lookup(np.array([1, 2], np.uint32), 10.0, ENDPOINTS).tolist() == [0, 1]  # rolled: previous
    assert affinity.lookup(np.array([1, 2], np.uint32), 19.9, ENDPOINTS).tolist() == [0, 1]
    assert affinity.lookup(np.array([1, 2], np.uint32), 20.0, ENDPOINTS).tolist() == [NONE, NONE]  # 2 windows
    assert len(affinity) == 0


def test_a_backend_no_longer_listed_is_no_affinity():
    affinity = Affinity(window_s=10)
    affinity.record(np.array([7, 8], np.uint32), "gw-gone:4317", now=0.0)
    affinity.record(np.array([8], np.uint32), "gw-c:4317", now=1.0)
    assert affinity.lookup(np.array([7, 8, 9], np.uint32), 2.0, ENDPOINTS).tolist() == [NONE, 2, NONE]


def test_a_backend_failing_again_within_the_hold_of_its_return_continues_its_outage():
    hold = 10.0
    assert outage_began(100.0, None, hold) == 100.0  # a first outage begins now
    assert outage_began(100.0, (50.0, 95.0), hold) == 50.0  # back at 95, down again at 100: since 50
    assert outage_began(105.0, (50.0, 95.0), hold) == 105.0  # back for the whole hold: a new outage
    assert outage_began(100.0, (50.0, 95.0), 0.0) == 100.0  # no hold: every outage its own

