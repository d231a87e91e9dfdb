"""``agent-sre validate``, ``agent-sre config`` and ``agent-sre components``: the config and the component types.

What these print never holds a secret: ``validate`` prints counts and problems (masked by the loader),
``config`` prints every secret-bearing setting as ``***`` and masks substituted secrets anywhere else.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from agent_sre.pipeline.cli.common import load

if TYPE_CHECKING:
    from agent_sre.pipeline.service.config import PipelineConfig


def _kinds():
    from agent_sre.pipeline.component import Kind

    return (Kind.RECEIVER, Kind.PROCESSOR, Kind.EXPORTER, Kind.EXTENSION)


def cmd_validate(args: argparse.Namespace) -> int:
    cfg = load(args.config)
    assert cfg.service is not None
    print(f"{cfg.source}: valid ({len(cfg.service.pipelines)} pipeline(s), "
          f"{sum(len(cfg.section(k)) for k in _kinds())} component(s))")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    import yaml

    cfg = load(args.config)
    print(f"# {cfg.source}: the effective configuration (defaults filled in, secrets masked)")
    print(yaml.safe_dump(effective_config(cfg), sort_keys=False, default_flow_style=False), end="")
    return 0


def effective_config(cfg: PipelineConfig) -> dict[str, Any]:
    """The validated config as plain data, each component with its defaults, secrets masked."""
    assert cfg.service is not None
    doc: dict[str, Any] = {}
    for kind in _kinds():
        section = cfg.section(kind)
        if section:
            doc[kind.section] = {key: cc.settings.model_dump(mode="json") for key, cc in section.items()}
    doc["service"] = cfg.service.model_dump(mode="json")
    return _masked(doc, cfg, secret=False)


def _masked(node: Any, cfg: PipelineConfig, secret: bool) -> Any:
    from agent_sre.pipeline.service.config import MASK, is_secret_key

    if isinstance(node, dict):
        return {k: _masked(v, cfg, secret or is_secret_key(str(k))) for k, v in node.items()}
    if isinstance(node, list):
        return [_masked(v, cfg, secret) for v in node]
    if isinstance(node, str):
        return MASK if secret and node else cfg.mask(node)
    return node


def cmd_components(args: argparse.Namespace) -> int:
    from agent_sre.pipeline.component.registry import registry

    for kind in _kinds():
        print(f"{kind.section}:")
        for factory in registry.all():
            if factory.kind is kind:
                signals = f" [{', '.join(factory.signals)}]" if factory.signals else ""
                print(f"  {factory.type:<16}{signals} {factory.description}")
    return 0
