"""Components find each other through typed capabilities provided under their ids."""

from __future__ import annotations

import pytest

from agent_sre.pipeline.component.capabilities import SloReports, SpanStore
from agent_sre.pipeline.component.host import CapabilityError, Host
from agent_sre.pipeline.component.telemetry import Telemetry


class Reports:
    last_report: list[dict] = []

    def report(self) -> list[dict]:
        return []


def test_the_only_provider_is_found_without_an_id_and_a_named_one_by_its_id():
    host = Host(Telemetry())
    a, b = Reports(), Reports()
    host.provide(SloReports, "slo", a)
    assert host.get(SloReports) is a
    host.provide(SloReports, "slo/canary", b)
    assert host.get(SloReports, "slo/canary") is b
    assert host.all(SloReports) == [a, b]
    host.withdraw(SloReports, "slo")
    assert host.all(SloReports) == [b]


def test_a_missing_or_ambiguous_capability_is_a_clear_error_naming_who_asked():
    host = Host(Telemetry())
    with pytest.raises(CapabilityError, match=r"processors::slo: needs exactly one SpanStore, found 0"):
        host.get(SpanStore, "", "processors::slo")
    host.provide(SloReports, "slo/a", Reports())
    host.provide(SloReports, "slo/b", Reports())
    with pytest.raises(CapabilityError, match="found 2; name one with its id"):
        host.get(SloReports, "", "admin")
    with pytest.raises(CapabilityError, match=r"no SloReports named 'slo/c' is running \(running: \['slo/a', 'slo/b'\]\)"):
        host.get(SloReports, "slo/c", "admin")
