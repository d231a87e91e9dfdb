"""Imports only go down the layers (docs/architecture.md, "Where things go"):

    pipeline/pdata      the data model and codecs               imports nothing of ours above it
    pipeline/component  the component framework and the host    pdata
    pipeline/storage    spool, span store, its SQL sandbox       pdata, component
    pipeline/service    config loading, graph, lifecycle, admin  the above
    receivers/, processors/, exporters/   one folder per type   the pipeline layers (not service),
                                                                never another component's folder
    pipeline/cli        the command line                        anything
    pipeline/client     what runs inside an agent               the standard library only

Read from the code's own import statements (function-level ones included)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = {"pipeline.pdata": 0, "pipeline.component": 1, "pipeline.storage": 2, "pipeline.service": 3,
          "receivers": 4, "processors": 4, "exporters": 4, "pipeline.cli": 5}
# Folders of shared code, not component types: any exporter may use them.
SHARED = {"exporters.helper", "exporters.alerting"}
# A component built on another one (a preset or a second transport of the same data), named here so
# the exception is seen and stays the only one.
BUILT_ON = {("exporters.langfuse", "exporters.otlphttp"),  # langfuse is otlphttp with a preset and a mapping
            ("exporters.wandb", "exporters.mlflow"),  # the same metric rows as the mlflow runs
            ("exporters.prometheusremotewrite", "exporters.prometheus"),  # the same metrics, pushed
            # what-if recomputes with the very math of the stages it asks "what if" of
            ("exporters.loadbalancing", "exporters.otlp"), ("exporters.loadbalancing", "exporters.otlphttp"),  # each gateway is an otlp/otlphttp exporter
            ("processors.replay", "processors.cost"), ("processors.replay", "processors.sli"),
            ("processors.replay", "processors.slo"), ("processors.replay", "processors.incidents")}


def _module(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def _ours(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every agent_sre import in the file, without the agent_sre. prefix."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                 else [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else [])
        out += [(node.lineno, n.removeprefix("agent_sre.")) for n in names if n.startswith("agent_sre.")]
    return out


def _layer(module: str) -> tuple[int, str] | None:
    for prefix, layer in sorted(LAYERS.items(), key=lambda kv: -len(kv[0])):
        if module == prefix or module.startswith(prefix + "."):
            parts = module.split(".")
            unit = ".".join(parts[:2]) if layer == 4 else prefix  # a component folder is its own unit
            return layer, unit
    return None


def _files() -> list[Path]:
    return sorted(p for d in ("pipeline", "receivers", "processors", "exporters") for p in (ROOT / d).rglob("*.py"))


def test_imports_only_go_down_the_layers():
    wrong = []
    for path in _files():
        me = _module(path)
        if me.startswith("pipeline.client"):
            continue
        mine = _layer(me)
        if mine is None:
            continue
        for line, target in _ours(path):
            theirs = _layer(target)
            if theirs is None or theirs[1] == mine[1] or theirs[1] in SHARED:
                continue
            if mine[0] == 4 and theirs[0] == 4 and (mine[1], theirs[1]) not in BUILT_ON:
                wrong.append(f"{path.relative_to(ROOT)}:{line}: {me} imports another component's {target}")
            elif theirs[0] > mine[0] or (mine[0] == 4 and theirs[0] == 3):
                wrong.append(f"{path.relative_to(ROOT)}:{line}: {me} (layer {mine[1]}) imports {target} from above")
    assert wrong == []


# What runs inside an agent may import the agent's OpenTelemetry (API, SDK, instrumentations) inside
# functions: the agent has it when it asks for it, and importing the package costs nothing without it.
CLIENT_PACKAGES = ("agent_sre.pipeline.client", "agent_sre.replay", "agent_sre.chaos", "agent_sre.delivery",
                   "agent_sre.instrument")


@pytest.mark.parametrize("path", sorted((ROOT / "pipeline" / "client").rglob("*.py")), ids=lambda p: p.name)
def test_the_client_side_package_needs_only_the_standard_library_at_import(path):
    stdlib = sys.stdlib_module_names
    tree = ast.parse(path.read_text())
    in_functions = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                    for n in ast.walk(f)}
    for node in ast.walk(tree):
        names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                 else [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else [])
        for name in names:
            top = name.split(".")[0]
            if top == "opentelemetry" and id(node) in in_functions:
                continue
            assert top in stdlib or top == "__future__" or name.startswith(CLIENT_PACKAGES), (
                f"{path.name}:{node.lineno} imports {name}")
