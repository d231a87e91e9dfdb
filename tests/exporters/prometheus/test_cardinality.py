"""prometheus exporter, cardinality limit: label sets beyond max_series_per_metric fold into one overflow series
per metric (otel_metric_overflow="true", client-data labels "__overflow__"), totals are kept, what is folded is
counted in self-telemetry and logged once per metric, and a real Prometheus ingests the overflow series."""

from __future__ import annotations

import logging
import urllib.request

import pytest

from agent_sre.pipeline.service import Service
from agent_sre.pipeline.service.config import parse_config
from tests.conftest import Ports, eventually, free_port, pipeline_yaml
from tests.exporters.prometheus.test_prometheus_exporter import CONFIG, scrape
from tests.processors.sli.test_sli import MINUTE, T0, TOOL, spans
from tests.prometheus_server import prometheus

LIMIT = 5
RED = "agent_sre_span_duration_seconds"
TOKENS = "gen_ai_client_token_usage"
OVERFLOW = {"otel_metric_overflow": "true"}


def start(tmp_path, metrics_port: int, limit: int = LIMIT) -> tuple[Service, Ports]:
    ports = Ports.allocate()
    text = pipeline_yaml(ports, tmp_path, processors="memory_limiter, agent_semconv, sli, slo, batch",
                         exporters="duckdb, prometheus")
    text = text.replace("  batch:\n", CONFIG + "  batch:\n", 1)
    text = text.replace("  debug:\n", f"  prometheus:\n    endpoint: 127.0.0.1:{metrics_port}\n"
                                      f"    max_series_per_metric: {limit}\n  debug:\n", 1)
    service = Service(parse_config(text, "test"))
    service.start()
    return service, ports


def send(ports: Ports, request) -> None:
    """Over OTLP/HTTP, as a client would."""
    req = urllib.request.Request(f"http://127.0.0.1:{ports.http}/v1/traces", data=request.SerializeToString(),
                                 headers={"Content-Type": "application/x-protobuf"}, method="POST")
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 200


def tool_calls(agents: range, per_agent: int = 1, failed: bool = False):
    return spans([({**TOOL, "agent.did": f"a{i:02}"}, failed, 0) for i in agents for _ in range(per_agent)])


def llm_calls(models: range):
    return spans([({"agent.did": "a1", "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
                    "gen_ai.request.model": f"m{i}", "gen_ai.usage.input_tokens": 100,
                    "gen_ai.usage.output_tokens": 20 + i}, False, 0) for i in models])


def counts(families: dict, metric: str) -> list:
    return [s for s in families.get(metric, []) if s.name == f"{metric}_count"]


def scrape_when(port: int, metric: str, total: float) -> dict | None:
    """The scrape once the counts of ``metric`` over all its series reach ``total`` (the exporters see a
    batch after its commit, so after the client's answer), else None."""

    def check():
        families = scrape(port)
        return families if sum(s.value for s in counts(families, metric)) == total else None

    return eventually(check)


def red_total(port: int):
    return lambda total: scrape_when(port, RED, total)


def overflow_series(samples: list) -> list:
    return [s for s in samples if s.labels.get("otel_metric_overflow") == "true"]


def self_metric(ports: Ports, metric: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{ports.metrics}/metrics", timeout=5) as r:
        text = r.read().decode()
    line = f'agent_sre_exporter_series_overflow_total{{exporter="prometheus",metric="{metric}"}} '
    found = [float(x.split(" ")[-1]) for x in text.splitlines() if x.startswith(line)]
    return found[0] if found else 0.0


def test_agent_ids_beyond_the_limit_fold_into_one_overflow_series_and_the_total_is_kept(tmp_path):
    port = free_port()
    service, ports = start(tmp_path, port)
    try:
        send(ports, tool_calls(range(20), per_agent=3))
        f = red_total(port)(60)
        assert f, "the scrape never counted the 60 spans"
        series = counts(f, RED)
        assert len(series) == LIMIT + 1
        (over,) = overflow_series(series)
        assert over.value == 45  # 15 agents folded, 3 spans each
        assert {k: over.labels[k] for k in ("agent_id", "model", "tool_name", "span_role")} == dict.fromkeys(
            ("agent_id", "model", "tool_name", "span_role"), "__overflow__")
        assert over.labels["status_code"] == "unset"  # a closed enum: kept, so error ratios stay right
        own = [s for s in series if s not in overflow_series(series)]
        assert all(s.value == 3 and "otel_metric_overflow" not in s.labels for s in own)
    finally:
        service.shutdown()


def test_series_kept_before_the_limit_keep_updating_after_it(tmp_path):
    port = free_port()
    service, ports = start(tmp_path, port)
    try:
        send(ports, tool_calls(range(LIMIT)))
        assert red_total(port)(LIMIT)
        send(ports, tool_calls(range(LIMIT, 30)))  # 25 new agents: all folded
        send(ports, tool_calls(range(LIMIT), per_agent=4))  # the first five again
        f = red_total(port)(LIMIT + 25 + 4 * LIMIT)
        assert f
        by_agent = {s.labels["agent_id"]: s.value for s in counts(f, RED)}
        assert by_agent == {**{f"a{i:02}": 5 for i in range(LIMIT)}, "__overflow__": 25}
    finally:
        service.shutdown()


def test_a_known_agents_errors_after_the_limit_get_their_own_series_not_the_overflow(tmp_path):
    port = free_port()
    service, ports = start(tmp_path, port)
    try:
        send(ports, tool_calls(range(LIMIT)))  # the first agents seen keep their series
        assert red_total(port)(LIMIT)
        send(ports, tool_calls(range(LIMIT, LIMIT + 5)))
        send(ports, tool_calls(range(2), failed=True))  # a new label set of a00 and a01, past the limit
        f = red_total(port)(LIMIT + 7)
        assert f
        errors = {s.labels["agent_id"]: s.value for s in counts(f, RED) if s.labels["status_code"] == "error"}
        assert errors == {"a00": 1, "a01": 1}
    finally:
        service.shutdown()


def test_folded_spans_are_counted_per_exporter_and_metric_and_logged_once_per_metric(tmp_path, caplog):
    port = free_port()
    service, ports = start(tmp_path, port)
    try:
        with caplog.at_level(logging.WARNING, logger="agent_sre.exporter"):
            send(ports, tool_calls(range(LIMIT + 7)))
            assert red_total(port)(LIMIT + 7)
            send(ports, tool_calls(range(100, 110)))
            assert red_total(port)(LIMIT + 17)
        assert self_metric(ports, RED) == 17
        warnings = [r.getMessage() for r in caplog.records if "max_series_per_metric" in r.getMessage()]
        assert len([w for w in warnings if RED in w]) == 1, warnings
        assert "prometheus" in warnings[0] and "otel_metric_overflow" in warnings[0]
    finally:
        service.shutdown()


def test_genai_models_beyond_the_limit_fold_per_token_type_and_the_token_sums_are_kept(tmp_path):
    port = free_port()
    service, ports = start(tmp_path, port)
    try:
        send(ports, llm_calls(range(12)))
        f = scrape_when(port, TOKENS, 24)
        assert f
        sums = [s for s in f[TOKENS] if s.name == f"{TOKENS}_sum"]
        own = [s for s in sums if s not in overflow_series(sums)]
        assert len({s.labels["gen_ai_request_model"] for s in own}) == LIMIT
        assert len(own) == 2 * LIMIT  # a model with its own series has it for both token types
        assert {s.labels["gen_ai_token_type"]: s.labels["gen_ai_request_model"]
                for s in overflow_series(sums)} == {"input": "__overflow__", "output": "__overflow__"}
        for kind, want in (("input", 12 * 100), ("output", sum(20 + i for i in range(12)))):
            assert sum(s.value for s in sums if s.labels["gen_ai_token_type"] == kind) == want
        durations = counts(f, "gen_ai_client_operation_duration_seconds")
        assert len(durations) == LIMIT + 1 and sum(s.value for s in durations) == 12
    finally:
        service.shutdown()


def test_sli_counters_fold_agents_beyond_the_limit_and_keep_the_totals(tmp_path):
    port = free_port()
    service, ports = start(tmp_path, port)
    try:
        send(ports, tool_calls(range(12), per_agent=2))
        send(ports, tool_calls(range(12), failed=True))

        def sli_events():
            f = scrape(port)
            events = f.get("agent_sre_sli_events", [])
            return f if sum(s.value for s in events) == 36 else None

        f = eventually(sli_events)
        assert f
        events, good = f["agent_sre_sli_events"], f["agent_sre_sli_good_events"]
        assert len(events) == LIMIT + 1 and len(good) == LIMIT + 1
        (over,) = overflow_series(events)
        assert over.labels == {"sli": "tool_call_accuracy", "agent_id": "__overflow__",
                               "agent_version": "__overflow__", **OVERFLOW}
        assert over.value == 7 * 3
        assert sum(s.value for s in good) == 24
        assert self_metric(ports, "agent_sre_sli_events") == 21
    finally:
        service.shutdown()


def test_slo_gauges_fold_agents_beyond_the_limit_into_the_worst_value(tmp_path):
    port = free_port()
    service, ports = start(tmp_path, port)
    try:
        send(ports, tool_calls(range(LIMIT + 3), per_agent=10))
        send(ports, tool_calls(range(LIMIT, LIMIT + 3), failed=True))  # only folded agents fail
        slo = service.components_of("slo")[0]
        slo.clock = lambda: (T0 + MINUTE) / 1e9
        assert eventually(lambda: sum(r["events"] for r in slo.report()) == 10 * (LIMIT + 3) + 3)
        f = scrape(port)
        burn = [s for s in f["agent_sre_slo_burn_rate"] if s.labels["window"] == "1h"]
        assert len(burn) == LIMIT + 1
        (over,) = overflow_series(burn)
        assert over.labels["slo"] == "tools" and over.labels["agent_id"] == "__overflow__"
        assert over.value > 0 and all(s.value == 0 for s in burn if s is not over)  # the worst folded agent
        (value,) = overflow_series(f["agent_sre_slo_sli_value"])
        assert value.value == pytest.approx(10 / 11)
    finally:
        service.shutdown()


@pytest.mark.slow
def test_a_real_prometheus_ingests_the_overflow_series_and_sums_to_every_span(tmp_path):
    port = free_port()
    service, ports = start(tmp_path, port)
    try:
        send(ports, tool_calls(range(40), per_agent=2))
        assert red_total(port)(80)
        with prometheus(tmp_path, port) as prom:
            (over,) = prom.query_until(f'{RED}_count{{otel_metric_overflow="true"}}')
            (total,) = prom.query_until(f"sum({RED}_count)")
            (n,) = prom.query_until(f"count({RED}_count)")
        assert over["metric"]["agent_id"] == "__overflow__" and float(over["value"][1]) == 70
        assert float(total["value"][1]) == 80
        assert float(n["value"][1]) == LIMIT + 1
    finally:
        service.shutdown()


def test_sixty_four_thousand_distinct_agents_in_one_fold_cost_the_limit_plus_one_series():
    import pyarrow as pa

    from agent_sre.exporters.prometheus.histograms import DURATION_BUCKETS, HistogramSet

    folded = []
    h = HistogramSet("x", "x", ("agent_id", "status_code"), DURATION_BUCKETS, 100, kept=("status_code",),
                     on_overflow=lambda metric, n: folded.append((metric, n)))
    n = 65_536
    h.observe([pa.array([f"a{i}" for i in range(n)]), pa.array(["unset"] * n)], pa.array([0.5] * n))
    family = h.family()
    count = [s for s in family.samples if s.name == "x_count"]
    assert len(count) == 100 + 1
    assert sum(s.value for s in count) == n
    assert folded == [("x", n - 100)]


def test_max_series_per_metric_must_be_positive_and_the_old_max_series_key_is_refused(tmp_path):
    from agent_sre.pipeline.component.errors import ConfigError

    for setting, complaint in (("max_series_per_metric: 0", "exporters::prometheus::max_series_per_metric"),
                               ("max_series: 10", "invalid keys: max_series (valid keys: endpoint, max_series_per")):
        text = pipeline_yaml(Ports.allocate(), tmp_path, exporters="duckdb, prometheus")
        text = text.replace("  debug:\n", f"  prometheus:\n    {setting}\n  debug:\n", 1)
        with pytest.raises(ConfigError) as err:
            parse_config(text, "test")
        assert complaint in str(err.value), str(err.value)
