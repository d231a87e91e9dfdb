"""Config validation: every problem at once, each with its YAML path and the valid choices."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest
import yaml

from agent_sre.pipeline.component.config import parse_duration
from agent_sre.pipeline.component.errors import ConfigError
from agent_sre.pipeline.service.config import (
    MAX_EXPANDED_NODES,
    install_secret_log_filter,
    load_config,
    parse_config,
)

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
    assert traces.processors == ["memory_limiter", "batch", "agent_semconv", "cost", "sli", "slo", "anomaly", "chaos",
                                 "incidents", "delivery"]
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


# --- hostile and careless YAML ----------------------------------------------------------------


def test_recursive_alias_is_a_clear_error_with_its_line():
    assert problems("recursive_alias.yaml") == [
        "not valid YAML: line 4 column 13: alias *loop is inside the node it names (a recursive alias)"]


def test_billion_laughs_is_refused_in_under_a_second_without_expanding():
    start = time.perf_counter()
    (p,) = problems("billion_laughs.yaml")
    elapsed = time.perf_counter() - start
    assert p.startswith("not valid YAML: line 13 column 10: with its aliases expanded this node holds more than "
                        f"{MAX_EXPANDED_NODES} nodes")
    assert elapsed < 1.0
    tracemalloc.start()
    try:
        problems("billion_laughs.yaml")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 5 * 2**20


def test_aliases_and_merge_keys_within_the_bound_still_work():
    cfg = parse_config("""
receivers:
  otlp: &otlp {protocols: {grpc: {endpoint: "127.0.0.1:5317"}}}
  otlp/copy:
    <<: *otlp
    workers: 0
exporters: {duckdb: {}}
service: {pipelines: {traces: {receivers: [otlp, otlp/copy], exporters: [duckdb]}}}
""", env={})
    assert cfg.receivers["otlp/copy"].settings.protocols.grpc.endpoint == "127.0.0.1:5317"


def test_deeply_nested_document_is_a_clear_error_not_a_traceback():
    with pytest.raises(ConfigError) as err:
        parse_config("receivers: " + "[" * 50_000 + "]" * 50_000, env={})
    (p,) = err.value.problems
    assert str(p).startswith("not valid YAML: line 1 column ") and str(p).endswith("the document is nested too deeply")


def test_duplicate_keys_name_their_path_and_both_lines():
    assert problems("duplicate_key.yaml") == [
        "receivers::otlp::protocols::grpc: duplicate key: given at line 4 and again at line 5 "
        "(YAML would keep only the last)",
        "receivers: duplicate key: given at line 1 and again at line 11 (YAML would keep only the last)",
    ]


# --- secrets ---------------------------------------------------------------------------------


def test_file_substitution_reads_the_secret_without_its_trailing_newline(tmp_path):
    key = tmp_path / "dd_api_key"
    key.write_text("0123456789abcdef\n")
    cfg = parse_config(f"""
receivers: {{otlp: {{}}}}
exporters: {{datadog: {{api_key: "${{file:{key}}}"}}}}
service: {{pipelines: {{traces: {{receivers: [otlp], exporters: [datadog]}}}}}}
""", env={})
    assert cfg.exporters["datadog"].settings.api_key == "0123456789abcdef"
    assert cfg.secrets == {"0123456789abcdef"}


def test_unreadable_secret_file_is_an_error_naming_the_file(tmp_path):
    with pytest.raises(ConfigError) as err:
        parse_config(f"exporters: {{datadog: {{api_key: '${{file:{tmp_path}/missing}}'}}}}\n"
                     "service: {pipelines: {traces: {receivers: [], exporters: [datadog]}}}", env={})
    assert f"exporters::datadog::api_key: cannot read {tmp_path}/missing: No such file or directory" in \
        [str(p) for p in err.value.problems]


def test_substituted_secret_is_masked_in_error_messages(tmp_path):
    (tmp_path / "url").write_text("hooks.slack.example/T000/B000/from-a-file\n")
    with pytest.raises(ConfigError) as err:
        parse_config(f"""
exporters:
  slack: {{webhook_url: "${{env:SLACK_URL}}"}}
  teams: {{webhook_url: "${{file:{tmp_path}/url}}"}}
  duckdb: {{retention: "${{env:RETENTION}}"}}
service: {{pipelines: {{traces: {{receivers: [], exporters: [duckdb]}}}}}}
""", env={"SLACK_URL": "xoxb-not-a-url-s3cr3t", "RETENTION": "forever"})
    text = str(err.value)
    assert "s3cr3t" not in text and "from-a-file" not in text
    assert "exporters::slack::webhook_url: String should match pattern '^https?://' (got '***')" in text
    assert "exporters::teams::webhook_url: String should match pattern '^https?://' (got '***')" in text
    # A setting that carries no credential keeps its value in the message: it helps and is no secret.
    assert "exporters::duckdb::retention: must be a duration such as 200ms, 5s, 1h (got 'forever')" in text


def test_secret_log_filter_masks_secrets_in_messages_arguments_and_tracebacks():
    cfg = parse_config("""
exporters: {datadog: {api_key: "${env:DD_API_KEY}"}}
receivers: {otlp: {}}
service: {pipelines: {traces: {receivers: [otlp], exporters: [datadog]}}}
""", env={"DD_API_KEY": "dd-0123456789"})
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        install_secret_log_filter(cfg)
        log = logging.getLogger("agent_sre.exporter.datadog")
        log.error("sending with %s failed", cfg.exporters["datadog"].settings.api_key)
        try:
            raise RuntimeError("403 for key dd-0123456789")
        except RuntimeError:
            log.exception("datadog refused")
    finally:
        root.removeHandler(handler)
    text = stream.getvalue()
    assert "dd-0123456789" not in text
    assert "sending with *** failed" in text and "RuntimeError: 403 for key ***" in text


def test_validate_and_config_commands_never_print_a_secret(tmp_path):
    (tmp_path / "token").write_text("Bearer tok-from-file-42\n")
    path = tmp_path / "pipeline.yaml"
    path.write_text(f"""
receivers: {{otlp: {{}}, alerts: {{}}}}
exporters:
  datadog: {{api_key: "${{env:DD_API_KEY}}"}}
  webhook: {{url: "http://127.0.0.1:9/hook", headers: {{Authorization: "${{file:{tmp_path}/token}}"}}}}
service:
  pipelines:
    traces: {{receivers: [otlp], exporters: [datadog]}}
    events: {{receivers: [alerts], exporters: [webhook]}}
""")
    env = {**os.environ, "DD_API_KEY": "dd-secret-0123456789"}
    cli = [sys.executable, "-m", "agent_sre.pipeline.cli"]
    shown = subprocess.run([*cli, "config", "--config", str(path)], capture_output=True, text=True, env=env,
                           timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert "dd-secret" not in shown.stdout + shown.stderr and "tok-from-file" not in shown.stdout + shown.stderr
    doc = yaml.safe_load(shown.stdout)
    assert doc["exporters"]["datadog"]["api_key"] == "***"
    assert doc["exporters"]["webhook"]["headers"] == {"Authorization": "***"}
    assert doc["exporters"]["webhook"]["url"] == "http://127.0.0.1:9/hook"
    # The secret given to datadog's api_key, now also (wrongly) as the webhook's URL: invalid, and still masked.
    path.write_text(path.read_text().replace('"http://127.0.0.1:9/hook"', '"${env:DD_API_KEY}"'))
    checked = subprocess.run([*cli, "validate", "--config", str(path)], capture_output=True, text=True, env=env,
                             timeout=60)
    assert checked.returncode == 2
    assert "exporters::webhook::url" in checked.stderr and "dd-secret" not in checked.stdout + checked.stderr
