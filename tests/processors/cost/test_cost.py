"""cost: prices match genai-prices' own calculation (cached tokens and tiers included); the client's cost
wins; overrides price what the package does not know; an unknown model stays null."""

from __future__ import annotations

import pytest
from genai_prices import Usage, calc_price

from agent_sre.pipeline.pdata.normalize import load_conventions, normalize
from agent_sre.pipeline.pdata.otlp_arrow import request_to_table
from agent_sre.processors.cost.factory import CostConfig, Pricer, priced
from tests.otlp_builders import request


def llm_span(provider: str, model: str, inp: int, out: int, cached: int = 0, **extra) -> dict:
    return {"gen_ai.operation.name": "chat", "gen_ai.provider.name": provider, "gen_ai.request.model": model,
            "gen_ai.usage.input_tokens": inp, "gen_ai.usage.output_tokens": out,
            "gen_ai.usage.cache_read.input_tokens": cached, **extra}


def costs(specs: list[dict], overrides: dict | None = None) -> list:
    tables = [normalize(request_to_table(request(1, attrs=a)).table, load_conventions()) for a in specs]
    import pyarrow as pa

    batch = pa.concat_tables(tables)
    return priced(batch, Pricer(CostConfig(overrides=overrides or {}).overrides)).column("cost_usd").to_pylist()


REAL = [("openai", "gpt-4o-mini", 12_000, 800, 4_000), ("openai", "gpt-4o", 3_000, 1_200, 0),
        ("anthropic", "claude-3-5-sonnet-latest", 5_000, 300, 2_000),
        ("google", "gemini-1.5-pro", 200_000, 1_000, 0)]  # tiered above 128k input tokens


@pytest.mark.parametrize("provider,model,inp,out,cached", REAL, ids=[r[1] for r in REAL])
def test_price_matches_the_packages_own_calculation(provider, model, inp, out, cached):
    (got,) = costs([llm_span(provider, model, inp, out, cached)])
    want = calc_price(Usage(input_tokens=inp, output_tokens=out, cache_read_tokens=cached), model_ref=model,
                      provider_id=provider).total_price
    assert got == pytest.approx(float(want), rel=1e-12)
    assert got > 0


def test_cached_tokens_are_cheaper_than_uncached():
    fresh, cached = costs([llm_span("openai", "gpt-4o-mini", 10_000, 0, 0), llm_span("openai", "gpt-4o-mini", 10_000, 0, 8_000)])
    assert cached < fresh and fresh == pytest.approx(10_000 * 0.15 / 1e6)


def test_the_clients_cost_wins_and_non_llm_spans_are_untouched():
    sent, tool = costs([llm_span("openai", "gpt-4o", 3_000, 1_200, **{"gen_ai.usage.cost": 0.42}),
                        {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "search"}])
    assert sent == 0.42 and tool is None


def test_unknown_models_stay_null_unless_overridden_and_the_package_wins_over_overrides():
    unknown, mine, known = costs(
        [llm_span("acme", "acme-private-7b", 1_000, 100), llm_span("acme", "our-finetune", 1_000_000, 1_000_000, 500_000),
         llm_span("openai", "gpt-4o-mini", 1_000_000, 0)],
        overrides={"our-finetune": {"input_per_mtok": 2.0, "output_per_mtok": 6.0, "cached_input_per_mtok": 1.0},
                   "gpt-4o-mini": {"input_per_mtok": 999.0, "output_per_mtok": 999.0}})
    assert unknown is None  # never a silent 0
    assert mine == pytest.approx(0.5 * 2.0 + 0.5 * 1.0 + 6.0)
    assert known == pytest.approx(0.15)


@pytest.mark.slow
def test_unknown_models_are_listed_by_the_cli(tmp_path):
    import subprocess
    import sys

    from agent_sre.pipeline.service import Service
    from agent_sre.pipeline.service.config import parse_config
    from tests.conftest import Ports, pipeline_yaml

    text = pipeline_yaml(Ports.allocate(), tmp_path, processors="memory_limiter, agent_semconv, cost, batch")
    config = tmp_path / "pipeline.yaml"
    config.write_text(text.replace("  batch:\n", "  cost: {}\n  batch:\n", 1))
    service = Service(parse_config(config.read_text(), "test"))
    service.start()
    try:
        ingest = service.receivers[0].ingest
        ingest.export(request(3, attrs=llm_span("acme", "acme-private-7b", 100, 10)), "test")
        ingest.export(request(2, attrs=llm_span("openai", "gpt-4o-mini", 100, 10)), "test")
        priced_rows = service.exporters["duckdb"].store.query(
            "SELECT model, count(*) FROM spans WHERE cost_usd IS NOT NULL GROUP BY ALL").rows
        assert priced_rows == [["gpt-4o-mini", 2]]
    finally:
        service.shutdown()
    out = subprocess.run([sys.executable, "-m", "agent_sre.pipeline.cli", "cost", "unknown-models", "--config",
                          str(config), "--format", "csv"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["provider,model,spans,tokens", "acme,acme-private-7b,3,330"]
