"""The redaction processor on batches: what is masked, hashed, dropped and counted, and what is left alone."""

from __future__ import annotations

import pyarrow as pa
import pytest

from agent_sre.pipeline.component.errors import ConfigError
from agent_sre.pipeline.component.telemetry import Telemetry
from agent_sre.pipeline.service.config import parse_config
from tests.processors.redaction.helpers import attrs, event, logs, processor, spans

OPENAI = "sk-proj-Abcdefghijklmnopqrstuvwxyz0123456789"
AWS = "AKIAIOSFODNN7EXAMPLE"
GITHUB = "ghp_" + "a1B2c3D4e5" * 3 + "f6G7h8"
SLACK = "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx"


def test_api_keys_and_tokens_are_masked_with_their_kind():
    out = processor(presets=["secrets"]).process(spans({
        "openai": f"key {OPENAI} used", "aws": f"id={AWS}", "github": GITHUB, "slack": f"({SLACK})",
        "http.url": "https://api.example.com/v1?api_key=Zx9yW8vU7t&page=2",
        "http.request.header.x": "Authorization: Bearer eyJhbGciOi.abcDEF123",
    }))
    (a,) = attrs(out)
    assert a["openai"] == "key [REDACTED:openai_key] used"
    assert a["aws"] == "id=[REDACTED:aws_access_key]"
    assert a["github"] == "[REDACTED:github_token]"
    assert a["slack"] == "([REDACTED:slack_token])"
    assert a["http.url"] == "https://api.example.com/v1?api_key=[REDACTED:api_key]&page=2"
    assert a["http.request.header.x"] == "Authorization: Bearer [REDACTED:bearer_token]"


def test_emails_phones_and_luhn_valid_cards_are_masked_but_other_numbers_are_not():
    out = processor(presets=["pii"]).process(spans({
        "note": "mail jane.doe+x@example.co.uk or call +1 415 555 2671 / (415) 555-2671",
        "card": "paid with 4111 1111 1111 1111, amex 378282246310005",
        "order.id": "4111111111111112",  # 16 digits, Luhn-invalid: an id, not a card
        "start_ns": "1712345678901234567", "tokens": "1234567890", "date": "2024-01-15", "ip": "192.168.100.1",
    }))
    (a,) = attrs(out)
    assert a["note"] == "mail [REDACTED:email] or call [REDACTED:phone] / [REDACTED:phone]"
    assert a["card"] == "paid with [REDACTED:card], amex [REDACTED:card]"
    for key in ("order.id", "start_ns", "tokens", "date", "ip"):
        assert a[key] == dict(spans_input_row())[key]


def spans_input_row() -> dict:
    return {"order.id": "4111111111111112", "start_ns": "1712345678901234567", "tokens": "1234567890",
            "date": "2024-01-15", "ip": "192.168.100.1"}


def test_block_keys_redact_the_whole_value_and_allow_keys_drop_every_other_attribute():
    out = processor(presets=["secrets"], block_keys=["user.name"], allow_keys=["user.*", "db.password", "keep"]).process(
        spans({"user.name": "Jane Doe", "db.password": "hunter2", "keep": "yes", "internal.notes": "anything"}))
    (a,) = attrs(out)
    assert a == {"user.name": "[REDACTED:key]", "db.password": "[REDACTED:key]", "keep": "yes",
                 "agent_sre.redacted_count": "3"}


def test_ignore_keys_are_left_alone():
    out = processor(presets=["pii"], ignore_keys=["enduser.id"]).process(
        spans({"enduser.id": "jane@example.com", "other": "jane@example.com"}))
    (a,) = attrs(out)
    assert a["enduser.id"] == "jane@example.com" and a["other"] == "[REDACTED:email]"


def test_hash_action_gives_equal_tokens_for_equal_values_and_depends_on_the_key():
    key_a, key_b = "a" * 32, "b" * 32
    batch = spans({"who": "jane@example.com", "password": "hunter2"}, {"who": "mail jane@example.com", "x": "1"},
                  {"who": "john@example.com"})
    first = attrs(processor(presets=["secrets", "pii"], action="hash", hash_key=key_a, hash_length=12).process(batch))
    other = attrs(processor(presets=["secrets", "pii"], action="hash", hash_key=key_b).process(batch))
    token = first[0]["who"]
    assert token.startswith("[REDACTED:email:") and len(token) == len("[REDACTED:email:]") + 12
    assert first[1]["who"] == f"mail {token}"  # equal values still join
    assert first[2]["who"] != token
    assert first[0]["password"].startswith("[REDACTED:key:") and "hunter2" not in first[0]["password"]
    assert other[0]["who"] != token  # another key, another hash: not a dictionary attack on the emails


def test_resource_and_event_attributes_and_status_message_are_redacted():
    out = processor().process(spans(
        {"a": "1"}, {"b": "2"}, resource={"service.name": "svc", "owner": "ops@example.com"},
        events=[[event("exception", **{"exception.message": f"401 for {OPENAI}"}), event("log", msg="fine")], None],
        status_message=f"failed with api_key={OPENAI[3:]}"))
    assert attrs(out, "resource_attributes")[0] == {"service.name": "svc", "owner": "[REDACTED:email]"}
    evs = out.column("events").to_pylist()
    assert dict(evs[0][0]["attributes"]) == {"exception.message": "401 for [REDACTED:openai_key]"}
    assert dict(evs[0][1]["attributes"]) == {"msg": "fine"} and evs[1] is None
    assert out.column("status_message").to_pylist() == ["failed with api_key=[REDACTED:api_key]"] * 2


def test_each_span_counts_what_was_redacted_and_untouched_spans_carry_no_count():
    out = processor().process(spans(
        {"a": "jane@example.com", "b": f"{AWS} and {OPENAI}", "password": "x", "c": "clean"}, {"c": "clean"},
        events=[[event("e", m="ops@example.com")], []]))
    first, second = attrs(out)
    assert first["agent_sre.redacted_count"] == "4"  # a, b (one value, two secrets), password, the event's m
    assert second == {"c": "clean"}


def test_an_upstream_count_is_added_to_not_repeated():
    out = processor().process(spans({"agent_sre.redacted_count": "2", "a": "jane@example.com"},
                                    {"agent_sre.redacted_count": "5"}))
    first, second = out.column("attributes").to_pylist()
    assert first == [("a", "[REDACTED:email]"), ("agent_sre.redacted_count", "3")]
    assert second == [("agent_sre.redacted_count", "5")]


def test_genai_content_preset_keeps_only_the_length_of_message_contents():
    prompt = "My card is 4111 1111 1111 1111, help"
    out = processor(presets=["genai-content"]).process(spans({
        "gen_ai.prompt": prompt, "gen_ai.input.messages": '[{"role":"user","content":"hi"}]',
        "gen_ai.prompt.0.content": "héllo", "gen_ai.prompt.0.role": "user",
        "llm.output_messages.0.message.content": "answer", "gen_ai.usage.input_tokens": "12",
        "gen_ai.request.model": "gpt-4o",
    }))
    (a,) = attrs(out)
    assert a == {"gen_ai.prompt.length": str(len(prompt)), "gen_ai.input.messages.length": "32",
                 "gen_ai.prompt.0.content.length": "5", "gen_ai.prompt.0.role": "user",
                 "llm.output_messages.0.message.content.length": "6", "gen_ai.usage.input_tokens": "12",
                 "gen_ai.request.model": "gpt-4o", "agent_sre.redacted_count": "4"}


def test_log_records_are_redacted_and_genai_event_bodies_dropped_with_their_length():
    out = processor(presets=["secrets", "pii", "genai-content"]).process(logs(
        ("gen_ai.user.message", '{"content": "I am jane@example.org"}', {"gen_ai.system": "openai"}),
        (None, "login failed for jane@example.com", {"user.email": "jane@example.com"}),
        (None, "all good", {})))
    assert out.column("body").to_pylist() == [None, "login failed for [REDACTED:email]", "all good"]
    assert attrs(out) == [
        {"gen_ai.system": "openai", "body.length": "36", "agent_sre.redacted_count": "1"},
        {"user.email": "[REDACTED:email]", "agent_sre.redacted_count": "2"},
        {}]


def test_sliced_and_chunked_columns_are_redacted_row_for_row():
    batch = spans(*({"i": str(i), "m": f"u{i}@example.com" if i % 2 else "none"} for i in range(10)),
                  events=[[event("e", m=f"v{i}@example.com")] if i % 3 == 0 else None for i in range(10)])
    chunked = pa.concat_tables([batch.slice(1, 4), batch.slice(6, 3)])
    out = processor().process(chunked)
    rows = attrs(out)
    assert [r["i"] for r in rows] == ["1", "2", "3", "4", "6", "7", "8"]
    assert [r.get("agent_sre.redacted_count") for r in rows] == ["1", None, "2", None, "1", "1", None]
    assert all("@example.com" not in str(v) for v in out.column("events").to_pylist())


def test_redacted_values_are_counted_in_self_metrics_by_rule():
    telemetry = Telemetry()
    processor(telemetry).process(spans({"a": "jane@example.com x@y.org", "b": AWS, "password": "p"}))
    value = telemetry.registry.get_sample_value
    assert value("agent_sre_processor_redacted_values_total", {"processor": "redaction", "rule": "email"}) == 1
    assert value("agent_sre_processor_redacted_values_total", {"processor": "redaction",
                                                                "rule": "aws_access_key"}) == 1
    assert value("agent_sre_processor_redacted_values_total", {"processor": "redaction", "rule": "key"}) == 1
    assert b"jane" not in telemetry.exposition()


def test_own_patterns_are_applied_after_the_presets():
    out = processor(presets=[], patterns=[{"name": "employee_id", "regex": "EMP-[0-9]{6}"}]).process(
        spans({"a": "ticket by EMP-123456, jane@example.com"}))
    assert attrs(out)[0]["a"] == "ticket by [REDACTED:employee_id], jane@example.com"


def test_a_batch_without_anything_to_redact_is_unchanged():
    batch = spans({"a": "hello", "gen_ai.request.model": "gpt-4o"}, resource={"service.name": "svc"},
                  events=[[event("e", m="fine")]])
    assert processor(presets=["secrets", "pii", "genai-content"]).process(batch).equals(batch)


@pytest.mark.parametrize("settings,problem", [
    ("{action: hash}", "processors::redaction: action: hash needs hash_key"),
    ("{patterns: [{name: x, regex: '(?<=a)b'}]}", "processors::redaction::patterns[0]::regex: invalid regex"),
    ("{presets: [secret]}", "processors::redaction::presets[0]: Input should be 'secrets', 'pii' or 'genai-content'"),
])
def test_invalid_settings_name_their_path(settings, problem):
    with pytest.raises(ConfigError) as err:
        parse_config(f"receivers: {{otlp: {{}}}}\nprocessors: {{redaction: {settings}}}\nexporters: {{debug: {{}}}}\n"
                     "service: {pipelines: {traces: {receivers: [otlp], processors: [redaction], "
                     "exporters: [debug]}}}", env={})
    assert any(str(p).startswith(problem) for p in err.value.problems), err.value.problems


def test_the_hash_key_never_appears_in_config_errors():
    with pytest.raises(ConfigError) as err:
        parse_config("processors: {redaction: {action: hash, hash_key: '${env:K}', hash_length: 2}}\n"
                     "receivers: {otlp: {}}\nexporters: {debug: {}}\n"
                     "service: {pipelines: {traces: {receivers: [otlp], processors: [redaction], "
                     "exporters: [debug]}}}", env={"K": "short-key"})
    assert "short-key" not in str(err.value) and "hash_key: String should have at least 16 characters" in str(err.value)


def test_a_number_before_a_card_or_its_cvv_after_it_does_not_hide_the_card():
    out = processor(presets=["pii"]).process(spans({"a": "ref 2200 5100 0000 0000 0008", "b": "4111 1111 1111 1111 123"}))
    assert attrs(out)[0] == {"a": "ref 2200 [REDACTED:card]", "b": "[REDACTED:card] 123",
                             "agent_sre.redacted_count": "2"}
