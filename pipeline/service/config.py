"""Loading and validating the pipeline YAML (the OpenTelemetry Collector's shape).

    receivers / processors / exporters / extensions:  {type[/name]: settings}
    service: {extensions: [...], pipelines: {traces[/name]: {receivers, processors, exporters}},
              telemetry: {metrics: {address}, logs: {level}}}

Every problem is collected, each with its YAML path (``processors::batch::timeout``),
before anything starts; unknown types name the valid ones; a reference to an
undefined component names its list element (``service::pipelines::traces::exporters[1]``)
and the ids configured for that kind.  Component settings are pydantic models with
``extra='forbid'``: defaults first, the user's YAML laid on top.

The YAML is read by ``_ConfigLoader``: a recursive alias, a document that aliases expand beyond
``MAX_EXPANDED_NODES`` (a "billion laughs") and a nesting deeper than Python's stack are refused
with their line; a key given twice in one mapping is a problem naming both lines.

``${env:VAR}``, ``${env:VAR:-default}`` (``${VAR}`` too) and ``${file:/path}`` are substituted in
values.  What a ``${file:}`` gives, and what any substitution gives to a secret-bearing setting
(a key such as ``api_key``, ``token``, ``password``, ``headers``, ``webhook_url``: ``is_secret_key``),
is a secret: ``PipelineConfig.mask`` replaces it with ``***`` in problems, warnings and logs
(``SecretLogFilter``), and ``agent-sre config`` prints secret-bearing settings masked.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, ScalarNode, SequenceNode

from agent_sre.pipeline.component import ComponentID, Factory, Kind
from agent_sre.pipeline.component.config import ConfigModel, HostPort, parse_duration  # noqa: F401
from agent_sre.pipeline.component.errors import ConfigError, ConfigProblem

SIGNALS = ("traces", "metrics", "logs", "events")  # events: alerts, incidents, decisions... derived by processors
_ID_RE = re.compile(r"^[a-z][a-z0-9_]*(/[A-Za-z0-9_.\-]+)?$")
_SUBST_RE = re.compile(r"\$\{(?:file:(?P<file>[^}]+)|(?:env:)?(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?)\}")
_SCALAR_RE = re.compile(r"^(-?\d+(\.\d+)?|true|false)$")
# A key naming a credential: its substituted value is a secret (one path segment, split on _ . -).
_SECRET_KEY_RE = re.compile(r"(?i)(?:^|[_.-])(?:key|token|secret|password|passwd|credentials?|auth|authorization|"
                            r"cookie|headers|dsn|webhook[_.-]?url)(?:$|[_.-])")
# The largest config we ship has ~400 nodes; 100k bounds what aliases can make of a few lines of YAML
# (a "billion laughs" of 9 levels expands to 10^9) while any real config fits.
MAX_EXPANDED_NODES = 100_000
MAX_SECRET_FILE_BYTES = 64 * 1024
MASK = "***"


def is_secret_key(key: str) -> bool:
    """Whether a setting named ``key`` carries a credential (``api_key``, ``headers``, ``webhook_url``...)."""
    return bool(_SECRET_KEY_RE.search(key))


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


def mask_secrets(text: str, secrets: frozenset[str] | set[str]) -> str:
    """``text`` with every secret (as written, and as ``repr`` writes it) replaced by ``***``.  A secret
    shorter than 4 characters is masked only where it stands quoted, so it does not garble the text."""
    for secret in sorted(secrets, key=len, reverse=True):
        quoted = repr(secret)
        forms = {quoted} if len(secret) < 4 else {secret, quoted[1:-1]}
        for form in forms:
            if form:
                text = text.replace(form, MASK if form != quoted else repr(MASK))
    return text


class SecretLogFilter(logging.Filter):
    """Masks the config's secrets in every record a handler writes (message, arguments and traceback)."""

    def __init__(self, secrets: frozenset[str]):
        super().__init__()
        self.secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            record.msg = mask_secrets(record.getMessage(), self.secrets)
            record.args = None
            if record.exc_info and not record.exc_text:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
            if record.exc_text:
                record.exc_text = mask_secrets(record.exc_text, self.secrets)
        return True


def install_secret_log_filter(cfg: PipelineConfig) -> None:
    """Mask ``cfg``'s secrets in what every handler of the root logger writes."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, SecretLogFilter) for f in handler.filters):
            handler.addFilter(SecretLogFilter(cfg.secrets))


# --- loading -------------------------------------------------------------------


def default_config_text() -> str:
    return resources.files("agent_sre.config").joinpath("default.yaml").read_text(encoding="utf-8")


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
        raw, problems = read_yaml(text)
    except yaml.YAMLError as exc:
        raise ConfigError([ConfigProblem("", f"not valid YAML: {_yaml_message(exc)}")], source) from exc
    subst = _Substitution(env if env is not None else dict(os.environ), problems)
    raw = subst.node(raw, "")
    cfg = build_config(raw if raw is not None else {}, source, problems)
    cfg.secrets = frozenset(subst.secrets)
    cfg.warnings = [cfg.mask(w) for w in cfg.warnings]
    if problems:
        raise ConfigError([ConfigProblem(p.path, cfg.mask(p.message)) for p in problems], source)
    return cfg


def _yaml_message(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1} column {mark.column + 1}: " if mark else ""
    return where + (getattr(exc, "problem", None) or str(exc))


# --- reading the YAML ----------------------------------------------------------


def read_yaml(text: str) -> tuple[Any, list[ConfigProblem]]:
    """The document and its duplicate-key problems; ``yaml.YAMLError`` (with a mark) for what cannot be read."""
    loader = _ConfigLoader(text)
    try:
        data = loader.get_single_data()
        return data, [problem for _, problem in sorted(loader.duplicates, key=lambda d: d[0])]
    except RecursionError:
        raise yaml.composer.ComposerError(None, None, "the document is nested too deeply", loader.get_mark()) from None
    finally:
        loader.dispose()


class _ConfigLoader(yaml.SafeLoader):
    """The safe loader, composing with three checks.  Sizes are counted on the node graph (an alias
    is the node it names, counted again where it is used), so a bomb is refused in time linear in
    its text, before anything is expanded."""

    def __init__(self, text: str):
        super().__init__(text)
        self.sizes: dict[int, int] = {}  # id(node) -> nodes it stands for, aliases expanded
        self.open_anchors: set[str] = set()  # anchors of the collections being composed
        self.path: list[str] = []
        self.duplicates: list[tuple[int, ConfigProblem]] = []  # (line of the repeat, problem)

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(AliasEvent):
            event = self.peek_event()
            if event.anchor in self.open_anchors:
                raise yaml.composer.ComposerError(
                    None, None, f"alias *{event.anchor} is inside the node it names (a recursive alias)",
                    event.start_mark)
            return super().compose_node(parent, index)
        anchor = self.peek_event().anchor
        segment = _segment(index)
        if anchor is not None:
            self.open_anchors.add(anchor)
        if segment is not None:
            self.path.append(segment)
        try:
            node = super().compose_node(parent, index)
            self._count(node)
        finally:
            self.open_anchors.discard(anchor)
            if segment is not None:
                self.path.pop()
        return node

    def _count(self, node: Any) -> None:
        if isinstance(node, SequenceNode):
            children = node.value
        elif isinstance(node, MappingNode):
            children = [n for pair in node.value for n in pair]
            self._check_duplicates(node)
        else:
            children = []
        size = 1 + sum(self.sizes[id(c)] for c in children)
        if size > MAX_EXPANDED_NODES:
            raise yaml.composer.ComposerError(
                None, None, f"with its aliases expanded this node holds more than {MAX_EXPANDED_NODES} nodes "
                            "(alias expansion is bounded: a 'billion laughs' document?)", node.start_mark)
        self.sizes[id(node)] = size

    def _check_duplicates(self, node: MappingNode) -> None:
        first: dict[str, int] = {}
        for key, _ in node.value:
            if not isinstance(key, ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
                continue
            line = key.start_mark.line + 1
            if key.value in first:
                self.duplicates.append((line, ConfigProblem(
                    _join(_join_path(self.path), str(key.value)),
                    f"duplicate key: given at line {first[key.value]} and again at line {line} "
                    "(YAML would keep only the last)")))
            else:
                first[key.value] = line


def _segment(index: Any) -> str | None:
    """The path segment of a node composed at ``index``: a mapping value's key, a sequence position."""
    if isinstance(index, ScalarNode):
        return str(index.value)
    if isinstance(index, int):
        return f"[{index}]"
    return None


def _join_path(segments: list[str]) -> str:
    path = ""
    for seg in segments:
        path = path + seg if seg.startswith("[") else _join(path, seg)
    return path


class _Substitution:
    """``${env:...}`` and ``${file:...}`` in values; collects the secrets it substituted."""

    def __init__(self, env: dict[str, str], problems: list[ConfigProblem]):
        self.env = env
        self.problems = problems
        self.secrets: set[str] = set()

    def node(self, node: Any, path: str, secret: bool = False) -> Any:
        if isinstance(node, dict):
            return {k: self.node(v, _join(path, str(k)), secret or is_secret_key(str(k))) for k, v in node.items()}
        if isinstance(node, list):
            return [self.node(v, f"{path}[{i}]", secret) for i, v in enumerate(node)]
        if not isinstance(node, str) or "${" not in node:
            return node
        whole = _SUBST_RE.fullmatch(node)
        value = _SUBST_RE.sub(lambda m: self._value(m, path, secret), node)
        if whole and not whole.group("file") and _SCALAR_RE.match(value):
            return yaml.safe_load(value)  # ${env:WORKERS} -> 2 is an int, as if written in the YAML
        return value

    def _value(self, m: re.Match, path: str, secret: bool) -> str:
        if m.group("file"):
            value = self._read_file(m.group("file").strip(), path)
            secret = True
        elif m.group("name") in self.env:
            value = self.env[m.group("name")]
        elif m.group("default") is not None:
            value = m.group("default")
        else:
            name = m.group("name")
            self.problems.append(ConfigProblem(path, f"environment variable {name} is not set "
                                                     f"(write ${{env:{name}:-default}} to give a default)"))
            return ""
        if secret and value:
            self.secrets.add(value)
        return value

    def _read_file(self, name: str, path: str) -> str:
        try:
            with open(name, "rb") as f:
                data = f.read(MAX_SECRET_FILE_BYTES + 1)
        except OSError as exc:
            self.problems.append(ConfigProblem(path, f"cannot read {name}: {exc.strerror or exc}"))
            return ""
        if len(data) > MAX_SECRET_FILE_BYTES:
            self.problems.append(ConfigProblem(path, f"{name} is larger than {MAX_SECRET_FILE_BYTES} bytes "
                                                     "(a ${file:} holds one secret)"))
            return ""
        try:
            return data.decode("utf-8").rstrip("\r\n")  # the newline editors and `echo` add is no part of it
        except UnicodeDecodeError:
            self.problems.append(ConfigProblem(path, f"{name} is not UTF-8 text"))
            return ""


def _join(path: str, key: str) -> str:
    return f"{path}::{key}" if path else key


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
        path = _join(kind.section, str(key))
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


def pydantic_problems(exc: ValidationError, prefix: str, model: type[BaseModel]) -> list[ConfigProblem]:
    """Turn pydantic errors into collector-style problems; unknown keys are grouped per mapping."""
    problems: list[ConfigProblem] = []
    extra: dict[tuple, list[str]] = {}
    for err in exc.errors():
        loc = tuple(err["loc"])
        if err["type"] == "extra_forbidden":
            extra.setdefault(loc[:-1], []).append(str(loc[-1]))
            continue
        path = _loc_path(prefix, loc)
        msg = err["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        if err["type"] == "missing":
            msg = "is required"
        elif "input" in err and "(got " not in msg and not isinstance(err["input"], dict):
            msg = f"{msg} (got {err['input']!r})"
        problems.append(ConfigProblem(path, msg))
    for loc, keys in extra.items():
        valid = _valid_keys(model, loc)
        parent = str(loc[-1]) if loc else prefix.rpartition("::")[2]
        hint = f" (valid keys: {', '.join(valid)})" if valid else ""
        problems.append(ConfigProblem(_loc_path(prefix, loc), f"'{parent}' has invalid keys: {', '.join(keys)}{hint}"))
    return problems


def _loc_path(prefix: str, loc: tuple) -> str:
    path = prefix
    for part in loc:
        path = f"{path}[{part}]" if isinstance(part, int) else _join(path, str(part))
    return path


def _valid_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    current: Any = model
    for part in loc:
        if isinstance(part, int) or not (isinstance(current, type) and issubclass(current, BaseModel)):
            return []
        info = current.model_fields.get(str(part))
        if info is None:
            return []
        current = _model_in(info.annotation)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _model_in(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_in(arg)
        if found is not None:
            return found
    return None
