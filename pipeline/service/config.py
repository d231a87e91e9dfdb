"""Loading and validating the pipeline YAML (the OpenTelemetry Collector's shape).

    receivers / processors / exporters / extensions:  {type[/name]: settings}
    service: {extensions: [...], pipelines: {traces[/name]: {receivers, processors, exporters}},
              telemetry: {metrics: {address}, logs: {level}}}

Every problem is collected, each with its YAML path (``processors::batch::timeout``),
before anything starts; unknown types name the valid ones; a reference to an
undefined component names its list element (``service::pipelines::traces::exporters[1]``)
and the ids configured for that kind.  Component settings are pydantic models with
``extra='forbid'``: defaults first, the user's YAML laid on top.

Reading the YAML (its hardening against alias bombs, recursive aliases and duplicate keys) and the
``${env:...}`` / ``${file:...}`` substitutions are in ``yaml_source.py``.  What a ``${file:}`` gives,
and what any substitution gives to a secret-bearing setting (``is_secret_key``), is a secret:
``PipelineConfig.mask`` replaces it with ``***`` in problems, warnings and logs
(``SecretLogFilter``), and ``agent-sre config`` prints secret-bearing settings masked.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError

from agent_sre.pipeline.component import ComponentID, Factory, Kind
from agent_sre.pipeline.component.config import ConfigModel, HostPort, parse_duration, pydantic_problems  # noqa: F401
from agent_sre.pipeline.component.errors import ConfigError, ConfigProblem
from agent_sre.pipeline.service.yaml_source import (  # noqa: F401 - re-exported: the config's public names
    MASK,
    MAX_EXPANDED_NODES,
    SecretLogFilter,
    default_config_text,
    is_secret_key,
    join_key,
    mask_secrets,
    read_config_source,
    yaml_message,
)

SIGNALS = ("traces", "metrics", "logs", "events")  # events: alerts, incidents, decisions... derived by processors
_ID_RE = re.compile(r"^[a-z][a-z0-9_]*(/[A-Za-z0-9_.\-]+)?$")


# --- service section -----------------------------------------------------------


class PipelineSpec(ConfigModel):
    receivers: list[str] = Field(min_length=1)
    processors: list[str] = []
    exporters: list[str] = Field(min_length=1)


class MetricsTelemetry(ConfigModel):
    address: HostPort | None = "127.0.0.1:8888"


class LogsTelemetry(ConfigModel):
    level: str = Field(default="info", pattern="^(?i:debug|info|warn|warning|error)$")


class TelemetrySettings(ConfigModel):
    metrics: MetricsTelemetry = MetricsTelemetry()
    logs: LogsTelemetry = LogsTelemetry()


class ServiceSettings(ConfigModel):
    extensions: list[str] = []
    pipelines: dict[str, PipelineSpec] = Field(min_length=1)
    telemetry: TelemetrySettings = TelemetrySettings()


@dataclass
class ComponentConfig:
    id: ComponentID
    factory: Factory
    settings: BaseModel


@dataclass
class PipelineConfig:
    source: str
    receivers: dict[str, ComponentConfig] = field(default_factory=dict)
    processors: dict[str, ComponentConfig] = field(default_factory=dict)
    exporters: dict[str, ComponentConfig] = field(default_factory=dict)
    extensions: dict[str, ComponentConfig] = field(default_factory=dict)
    service: ServiceSettings | None = None
    warnings: list[str] = field(default_factory=list)
    # Ids present in the YAML whose settings were invalid: already reported, so references to them are not.
    invalid: set[str] = field(default_factory=set)
    # Values substituted from ${file:} or into secret-bearing settings: never printed or logged.
    secrets: frozenset[str] = frozenset()

    def section(self, kind: Kind) -> dict[str, ComponentConfig]:
        return getattr(self, kind.section)

    def mask(self, text: str) -> str:
        return mask_secrets(text, self.secrets)


def install_secret_log_filter(cfg: PipelineConfig) -> None:
    """Mask ``cfg``'s secrets in what every handler of the root logger writes."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, SecretLogFilter) for f in handler.filters):
            handler.addFilter(SecretLogFilter(cfg.secrets))


# --- loading -------------------------------------------------------------------


def load_config(path: str | os.PathLike | None = None, env: dict[str, str] | None = None) -> PipelineConfig:
    """Load a pipeline YAML (or the embedded default) and validate it; raise ConfigError with all problems."""
    if path is None:
        return parse_config(default_config_text(), "<embedded default>", env)
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([ConfigProblem("", f"cannot read {p}: {exc.strerror or exc}")], str(p)) from exc
    return parse_config(text, str(p), env)


def parse_config(text: str, source: str = "config", env: dict[str, str] | None = None) -> PipelineConfig:
    try:
        raw, problems, secrets = read_config_source(text, env)
    except yaml.YAMLError as exc:
        raise ConfigError([ConfigProblem("", f"not valid YAML: {yaml_message(exc)}")], source) from exc
    cfg = build_config(raw if raw is not None else {}, source, problems)
    cfg.secrets = secrets
    cfg.warnings = [cfg.mask(w) for w in cfg.warnings]
    if problems:
        raise ConfigError([ConfigProblem(p.path, cfg.mask(p.message)) for p in problems], source)
    return cfg


# --- validation ----------------------------------------------------------------

_TOP_KEYS = ("receivers", "processors", "exporters", "extensions", "connectors", "service")


def build_config(raw: Any, source: str, problems: list[ConfigProblem]) -> PipelineConfig:
    from agent_sre.pipeline.component.registry import registry

    cfg = PipelineConfig(source=source)
    if not isinstance(raw, dict):
        problems.append(ConfigProblem("", f"the top level must be a mapping with keys {list(_TOP_KEYS)}"))
        return cfg
    unknown = [k for k in raw if k not in _TOP_KEYS]
    if unknown:
        problems.append(ConfigProblem("", f"has invalid keys: {', '.join(map(str, unknown))} "
                                          f"(valid keys: {', '.join(_TOP_KEYS)})"))
    if raw.get("connectors"):
        problems.append(ConfigProblem("connectors", "connectors are not supported yet"))
    for kind in (Kind.RECEIVER, Kind.PROCESSOR, Kind.EXPORTER, Kind.EXTENSION):
        _build_section(cfg, kind, raw.get(kind.section), registry, problems)
    if "service" not in raw:
        problems.append(ConfigProblem("service", "is required (service::pipelines must name at least one pipeline)"))
        return cfg
    service_raw = raw.get("service") or {}
    try:
        cfg.service = ServiceSettings.model_validate(service_raw)
    except ValidationError as exc:
        problems.extend(pydantic_problems(exc, "service", ServiceSettings))
        return cfg
    _check_service(cfg, problems)
    return cfg


def _build_section(cfg: PipelineConfig, kind: Kind, section: Any, registry, problems: list[ConfigProblem]) -> None:
    if section is None:
        return
    if not isinstance(section, dict):
        problems.append(ConfigProblem(kind.section, "must be a mapping of component ids to their settings"))
        return
    for key, settings in section.items():
        path = join_key(kind.section, str(key))
        if not isinstance(key, str) or not _ID_RE.match(key):
            cfg.invalid.add(path)
            problems.append(ConfigProblem(path, "invalid component id (expected type or type/name, e.g. otlp/agents)"))
            continue
        cid = ComponentID.parse(key)
        factory = registry.get(kind, cid.type)
        if factory is None:
            valid = ", ".join(registry.types(kind))
            problems.append(ConfigProblem(path, f'unknown type "{cid.type}" for id "{key}" (valid values: [{valid}])'))
            cfg.invalid.add(path)
            continue
        if settings is None:
            settings = {}
        if not isinstance(settings, dict):
            problems.append(ConfigProblem(path, f"must be a mapping of settings (got {type(settings).__name__})"))
            continue
        try:
            model = factory.config_model.model_validate(settings)
        except ValidationError as exc:
            problems.extend(pydantic_problems(exc, path, factory.config_model))
            cfg.invalid.add(path)
            continue
        cfg.section(kind)[key] = ComponentConfig(cid, factory, model)


def _check_service(cfg: PipelineConfig, problems: list[ConfigProblem]) -> None:
    assert cfg.service is not None
    for i, ext in enumerate(cfg.service.extensions):
        _check_reference(cfg, Kind.EXTENSION, ext, f"service::extensions[{i}]", problems)
    used: set[str] = set()
    for pid, spec in cfg.service.pipelines.items():
        path = f"service::pipelines::{pid}"
        signal = pid.partition("/")[0]
        if signal not in SIGNALS:
            problems.append(ConfigProblem(path, f'unknown signal "{signal}" (valid values: [{", ".join(SIGNALS)}])'))
            continue
        for kind, names in ((Kind.RECEIVER, spec.receivers), (Kind.PROCESSOR, spec.processors),
                            (Kind.EXPORTER, spec.exporters)):
            seen: set[str] = set()
            for i, name in enumerate(names):
                where = f"{path}::{kind.section}[{i}]"
                if name in seen:
                    problems.append(ConfigProblem(where, f'references {kind.value} "{name}" more than once'))
                seen.add(name)
                comp = _check_reference(cfg, kind, name, where, problems)
                if comp is not None and signal not in comp.factory.signals:
                    problems.append(ConfigProblem(where, f'{kind.value} "{name}" does not support {signal}'))
                used.add(f"{kind.section}::{name}")
    for kind in (Kind.RECEIVER, Kind.PROCESSOR, Kind.EXPORTER):
        for name in cfg.section(kind):
            if f"{kind.section}::{name}" not in used:
                cfg.warnings.append(f"{kind.section}::{name}: configured but used by no pipeline (ignored)")


def _check_reference(cfg: PipelineConfig, kind: Kind, name: str, where: str,
                     problems: list[ConfigProblem]) -> ComponentConfig | None:
    """The component ``name`` refers to; if it is not configured, report it at ``where`` with the ids that are."""
    comp = cfg.section(kind).get(name)
    prefix = f"{kind.section}::"
    # An id whose settings were invalid is configured (and already reported): referring to it is no new problem.
    if comp is None and prefix + name not in cfg.invalid:
        ids = sorted({*cfg.section(kind), *(p[len(prefix):] for p in cfg.invalid if p.startswith(prefix))})
        problems.append(ConfigProblem(where, f'references {kind.value} "{name}" which is not configured '
                                             f"(configured {kind.section}: [{', '.join(ids)}])"))
    return comp


