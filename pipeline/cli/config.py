"""``agent-sre validate`` and ``agent-sre components``: the config and the component types."""

from __future__ import annotations

import argparse

from agent_sre.pipeline.cli.common import load


def _kinds():
    from agent_sre.pipeline.component import Kind

    return (Kind.RECEIVER, Kind.PROCESSOR, Kind.EXPORTER, Kind.EXTENSION)


def cmd_validate(args: argparse.Namespace) -> int:
    cfg = load(args.config)
    assert cfg.service is not None
    print(f"{cfg.source}: valid ({len(cfg.service.pipelines)} pipeline(s), "
          f"{sum(len(cfg.section(k)) for k in _kinds())} component(s))")
    return 0


def cmd_components(args: argparse.Namespace) -> int:
    from agent_sre.pipeline.component.registry import registry

    for kind in _kinds():
        print(f"{kind.section}:")
        for factory in registry.all():
            if factory.kind is kind:
                signals = f" [{', '.join(factory.signals)}]" if factory.signals else ""
                print(f"  {factory.type:<16}{signals} {factory.description}")
    return 0
