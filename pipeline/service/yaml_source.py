"""Reading a pipeline YAML: the document, its substitutions and its secrets — with the standard library
and PyYAML only, so the commands that only need to know where things are (``agent-sre query``) read
the config without loading a component.

The YAML is read by ``_ConfigLoader``: a recursive alias, a document that aliases expand beyond
``MAX_EXPANDED_NODES`` (a "billion laughs") and a nesting deeper than Python's stack are refused
with their line; a key given twice in one mapping is a problem naming both lines.

``${env:VAR}``, ``${env:VAR:-default}`` (``${VAR}`` too) and ``${file:/path}`` are substituted in
values.  What a ``${file:}`` gives, and what any substitution gives to a secret-bearing setting
(``is_secret_key``), is a secret, masked by ``mask_secrets``.
"""

from __future__ import annotations

import logging
import os
import re
from importlib import resources
from typing import Any

import yaml
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, ScalarNode, SequenceNode

from agent_sre.pipeline.component.errors import ConfigProblem

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


def yaml_message(exc: yaml.YAMLError) -> str:
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
                    join_key(_join_path(self.path), str(key.value)),
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
        path = path + seg if seg.startswith("[") else join_key(path, seg)
    return path


class _Substitution:
    """``${env:...}`` and ``${file:...}`` in values; collects the secrets it substituted."""

    def __init__(self, env: dict[str, str], problems: list[ConfigProblem]):
        self.env = env
        self.problems = problems
        self.secrets: set[str] = set()

    def node(self, node: Any, path: str, secret: bool = False) -> Any:
        if isinstance(node, dict):
            return {k: self.node(v, join_key(path, str(k)), secret or is_secret_key(str(k))) for k, v in node.items()}
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


def join_key(path: str, key: str) -> str:
    return f"{path}::{key}" if path else key


def default_config_text() -> str:
    return resources.files("agent_sre.config").joinpath("default.yaml").read_text(encoding="utf-8")


def read_config_source(text: str, env: dict[str, str] | None = None) -> tuple[Any, list[ConfigProblem], frozenset[str]]:
    """The document with its substitutions made, the problems found, and the secrets substituted;
    ``yaml.YAMLError`` for what cannot be read."""
    raw, problems = read_yaml(text)
    subst = _Substitution(env if env is not None else dict(os.environ), problems)
    return subst.node(raw, ""), problems, frozenset(subst.secrets)
