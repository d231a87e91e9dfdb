"""Config validation: every problem at once, each with its YAML path and the valid choices."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent_sre.pipeline.component.config import parse_duration
from agent_sre.pipeline.component.errors import ConfigError
from agent_sre.pipeline.service.config import load_config, parse_config

DATA = Path(__file__).parent / "testdata"


def problems(name: str) -> list[str]:
    with pytest.raises(ConfigError) as err:
        load_config(DATA / name)
    return [str(p) for p in err.value.problems]


def test_embedded_default_is_valid():
    cfg = load_config(None, env={})
    assert list(cfg.receivers) == ["otlp", "alerts"]
    traces = cfg.service.pipelines["traces"]
    assert traces.exporters == ["duckdb", "prometheus"]
    # The whole SRE loop is the default.
    assert traces.processors == ["memory_limiter", "agent_semconv", "cost", "sli", "slo", "anomaly", "incidents",
                                 "batch"]
    assert cfg.exporters["prometheus"].settings.endpoint == "127.0.0.1:8889"
    assert cfg.exporters["duckdb"].settings.path == "./agent-sre-data/spans.duckdb"
    assert cfg.receivers["otlp"].settings.protocols.grpc.endpoint == "127.0.0.1:4317"


def test_shipped_configs_are_valid():
    for path in (Path(__file__).parents[2] / "config").glob("*.yaml"):
        load_config(path, env={})


def test_typo_key_names_the_path_and_the_valid_keys():
    assert problems("typo_key.yaml") == [
        "receivers::otlp::protocols: 'protocols' has invalid keys: htttp (valid keys: grpc, http)"]


def test_unknown_type_lists_the_valid_types():
    (p,) = problems("unknown_type.yaml")
    assert p == 'receivers::otlpp: unknown type "otlpp" for id "otlpp" (valid values: [alerts, otlp])'


def test_missing_references_name_the_list_element_and_the_configured_ids():
    assert problems("missing_reference.yaml") == [
        'service::extensions[0]: references extension "health_check" which is not configured '
        "(configured extensions: [])",
        'service::pipelines::traces::receivers[1]: references receiver "otlp/agents" which is not configured '
        "(configured receivers: [otlp])",
        'service::pipelines::traces::processors[1]: references processor "memory_limiter" which is not configured '
        "(configured processors: [batch])",
        'service::pipelines::traces::exporters[1]: references exporter "debug" which is not configured '
        "(configured exporters: [debug/verbose, duckdb])",
    ]


def test_reference_to_invalid_component_is_not_reported_twice_and_it_counts_as_configured():
    with pytest.raises(ConfigError) as err:
        parse_config("""
exporters: {duckdb: {retention: forever}, debug: {}}
receivers: {otlp: {}}
service: {pipelines: {traces: {receivers: [otlp], exporters: [duckdb, duckdb/main]}}}
""", env={})
    assert [str(p) for p in err.value.problems] == [
        "exporters::duckdb::retention: must be a duration such as 200ms, 5s, 1h (got 'forever')",
        'service::pipelines::traces::exporters[1]: references exporter "duckdb/main" which is not configured '
        "(configured exporters: [debug, duckdb])",
    ]


def test_duplicate_reference_names_the_repeated_element():
    with pytest.raises(ConfigError) as err:
        parse_config("""
receivers: {otlp: {}}
exporters: {duckdb: {}}
service: {pipelines: {traces: {receivers: [otlp], exporters: [duckdb, duckdb]}}}
""", env={})
    assert [str(p) for p in err.value.problems] == [
        'service::pipelines::traces::exporters[1]: references exporter "duckdb" more than once']


def test_all_errors_are_collected_at_once():
    found = problems("many_errors.yaml")
    assert "receivers::otlp::protocols::grpc::endpoint: must be host:port (got 'nowhere')" in found
    assert "processors::batch::timeout: must be a duration such as 200ms, 5s, 1h (got 'soon')" in found
    assert any(p.startswith("processors::batch::send_batch_size: Input should be greater than 0") for p in found)
    assert "processors::memory_limiter: spike_limit_mib (200) must be less than limit_mib (100)" in found
    assert "exporters::duckdb::retention: must be a duration such as 200ms, 5s, 1h (got 'forever')" in found
    assert any(p.startswith('service::pipelines::profiles: unknown signal "profiles"') for p in found)
    assert len(found) == 6


def test_bad_yaml_names_line_and_column():
    (p,) = problems("bad_yaml.yaml")
    assert p == "not valid YAML: line 4 column 8: expected ',' or ']', but got ':'"


def test_env_substitution_with_default_and_typing():
    cfg = parse_config("""
receivers: {otlp: {protocols: {grpc: {endpoint: "${env:GRPC:-127.0.0.1:5317}"}}, workers: "${env:W}"}}
exporters: {duckdb: {path: "${env:DIR}/x.duckdb"}}
service: {pipelines: {traces: {receivers: [otlp], exporters: [duckdb]}}}
""", env={"W": "3", "DIR": "/data"})
    otlp = cfg.receivers["otlp"].settings
    assert otlp.protocols.grpc.endpoint == "127.0.0.1:5317"
    assert otlp.protocols.http is None
    assert otlp.workers == 3
    assert cfg.exporters["duckdb"].settings.path == "/data/x.duckdb"


def test_unset_env_without_default_is_an_error():
    with pytest.raises(ConfigError) as err:
        parse_config("exporters: {duckdb: {path: '${env:NOPE}'}}\nservice: {pipelines: {traces: "
                     "{receivers: [], exporters: [duckdb]}}}", env={})
    assert "exporters::duckdb::path: environment variable NOPE is not set" in str(err.value)


def test_named_components_and_unused_warning():
    cfg = parse_config("""
receivers: {otlp/agents: {protocols: {http: }}}
exporters: {duckdb/main: {}, debug: {}}
service: {pipelines: {traces/agents: {receivers: [otlp/agents], exporters: [duckdb/main]}}}
""", env={})
    assert cfg.receivers["otlp/agents"].settings.protocols.http.endpoint == "127.0.0.1:4318"
    assert cfg.warnings == ["exporters::debug: configured but used by no pipeline (ignored)"]


@pytest.mark.parametrize("text,seconds", [("200ms", 0.2), ("5s", 5), ("1h", 3600), ("7d", 604800), (3, 3),
                                          ("1.5m", 90)])
def test_durations(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)
