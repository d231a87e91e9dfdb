"""What the command groups share: the config, where its store and admin API are, tables, errors.

Imports stay light here (the standard library): the config loader, the store and the processors
are imported by the functions that need them, so ``agent-sre --help`` starts at once.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from agent_sre.pipeline.cli.admin_client import AdminClient

if TYPE_CHECKING:
    import duckdb

    from agent_sre.pipeline.service.config import PipelineConfig

EXIT_CONFIG = 2
EXIT_RUNTIME = 1


class CliError(Exception):
    """Stops the command: ``main`` prints ``agent-sre: <message>`` and exits with ``code``."""

    def __init__(self, message: str, code: int = EXIT_RUNTIME):
        super().__init__(message)
        self.code = code


class StoreMissing(CliError):
    """The config's store does not exist yet (no pipeline ran with it): no data, not a failure, to
    the commands that report on the data."""

    def __init__(self, path: str):
        super().__init__(f"no span store at {Path(path).absolute()}")
        self.path = path


def note(message: str) -> None:
    print(f"agent-sre: {message}", file=sys.stderr)


def load(path: str | None) -> PipelineConfig:
    """The config at ``path`` (the embedded default without one); its warnings on standard error."""
    from agent_sre.pipeline.component.errors import ConfigError
    from agent_sre.pipeline.service.config import load_config

    try:
        cfg = load_config(path)
    except ConfigError as exc:
        raise CliError(str(exc), EXIT_CONFIG) from None
    for warning in cfg.warnings:
        note(f"warning: {warning}")
    return cfg


# --- what the config says ------------------------------------------------------------------

@dataclass(frozen=True)
class Targets:
    """Where a config's store and admin API are: all ``agent-sre query`` needs of it."""

    store: str | None
    spool: str | None
    admin: str | None  # host:port, with https:// when the admin listener has tls


def targets(path: str | None) -> Targets:
    """The config's store and admin API, read without building the config (the standard library and
    PyYAML only, so ``agent-sre query`` answers in a fraction of a second); a config that does not read
    cleanly goes through ``load`` for its errors."""
    import yaml

    from agent_sre.exporters.duckdb.defaults import STORE_PATH
    from agent_sre.pipeline.service.defaults import ADMIN_ENDPOINT
    from agent_sre.pipeline.service.yaml_source import default_config_text, read_config_source

    try:
        text = Path(path).read_text(encoding="utf-8") if path else default_config_text()
        raw, problems, _ = read_config_source(text)
    except (OSError, ValueError, yaml.YAMLError):
        problems, raw = [], None
    if problems or not isinstance(raw, dict):
        cfg = load(path)  # raises CliError with every problem
        return Targets(store_path(cfg), None, admin_endpoint(cfg))
    store = spool = admin = None
    for key, settings in (raw.get("exporters") or {}).items():
        if str(key).partition("/")[0] == "duckdb":
            settings = settings if isinstance(settings, dict) else {}
            store = settings.get("path") or STORE_PATH
            spool = (settings.get("spool") or {}).get("directory") or None
            break
    for key, settings in (raw.get("extensions") or {}).items():
        if str(key).partition("/")[0] == "admin":
            settings = settings if isinstance(settings, dict) else {}
            admin = ("https://" if settings.get("tls") else "") + str(settings.get("endpoint") or ADMIN_ENDPOINT)
            break
    return Targets(store, spool, admin)

def admin_endpoint(cfg: PipelineConfig) -> str | None:
    for cc in cfg.extensions.values():
        if cc.factory.type == "admin":
            scheme = "https://" if getattr(cc.settings, "tls", None) is not None else ""
            return scheme + cc.settings.endpoint  # type: ignore[attr-defined]
    return None


def store_path(cfg: PipelineConfig) -> str | None:
    for cc in cfg.exporters.values():
        if cc.factory.type == "duckdb":
            return cc.settings.path  # type: ignore[attr-defined]
    return None


def spool_dir(cfg: PipelineConfig, path: str) -> str | None:
    """The configured spool of the store at ``path`` (None: the default next to it)."""
    for cc in cfg.exporters.values():
        if cc.factory.type == "duckdb" and Path(cc.settings.path).absolute() == Path(path).absolute():
            return cc.settings.spool.directory or None  # type: ignore[attr-defined]
    return None


def processor_settings(cfg: PipelineConfig, type_: str) -> list:
    """The settings of every processor of ``type_`` in the config."""
    return [cc.settings for cc in cfg.processors.values() if cc.factory.type == type_]


# --- the running pipeline, or its file ------------------------------------------------------

def admin_client(args: argparse.Namespace, cfg: PipelineConfig | Targets) -> AdminClient | None:
    """The client of the running pipeline's admin API: ``--endpoint``, else the config's admin
    extension; None with ``--db`` (read that file) or without an endpoint."""
    if getattr(args, "db", None):
        return None
    endpoint = getattr(args, "endpoint", None) or (cfg.admin if isinstance(cfg, Targets) else admin_endpoint(cfg))
    return AdminClient(endpoint) if endpoint else None


def open_store(cfg: PipelineConfig | Targets, db: str | None = None) -> duckdb.DuckDBPyConnection:
    """``db``, else the config's store, opened read-only (no pipeline runs on it).  Raises
    ``StoreMissing`` when the config's store does not exist yet, ``CliError`` otherwise."""
    from agent_sre.pipeline.storage.store import open_read_only

    path = db or (cfg.store if isinstance(cfg, Targets) else store_path(cfg))
    if not path:
        raise CliError("no duckdb exporter in the config and no --db given", EXIT_CONFIG)
    if not db and not Path(path).exists():
        raise StoreMissing(path)
    try:
        if isinstance(cfg, Targets):
            same = cfg.store is not None and Path(cfg.store).absolute() == Path(path).absolute()
            spool = cfg.spool if same else None
        else:
            spool = spool_dir(cfg, path)
        return open_read_only(path, spool)
    except FileNotFoundError as exc:  # --db names no file
        raise CliError(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - missing, or locked by a pipeline whose API we could not reach
        raise CliError(f"cannot open {path} read-only: {exc}") from None


def reader(con):
    """``read(sql, params) -> rows`` over a connection: the signature the processors' functions take."""
    return lambda sql, params: con.execute(sql, params).fetchall()


# --- output --------------------------------------------------------------------------------

def print_table(body: dict, fmt: str) -> None:
    """``{"columns": [...], "rows": [[...]], "truncated": bool}`` as a table, CSV or JSON; spans the
    running store had acknowledged but not committed yet (``pending_spans``) are said on stderr."""
    if body.get("pending_spans"):
        print(f"note: {body['pending_spans']} acknowledged spans were not in the store yet (ingest is ahead of it); "
              "the answer is over what was committed", file=sys.stderr)
    if fmt == "json":
        print(json.dumps(body, indent=2, default=str))
        return
    columns = body["columns"]
    rows = [["NULL" if v is None else str(v) for v in row] for row in body["rows"]]
    if fmt == "csv":
        import csv

        w = csv.writer(sys.stdout)
        w.writerow(columns)
        w.writerows(rows)
        return
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(columns)]
    line = "+".join("-" * (w + 2) for w in widths)
    print(" | ".join(c.ljust(w) for c, w in zip(columns, widths, strict=False)))
    print(line)
    for r in rows:
        print(" | ".join(v.ljust(w) for v, w in zip(r, widths, strict=False)))
    more = " (truncated)" if body.get("truncated") else ""
    print(f"({len(rows)} row{'s' if len(rows) != 1 else ''}{more})")


def emit(text: str, out: str | None, what: str) -> int:
    """Write ``text`` to the file ``out`` (saying so), or to standard output."""
    if out:
        Path(out).write_text(text)
        print(f"wrote {what} to {out}")
    else:
        sys.stdout.write(text)
    return 0


def utc(ns: int | None) -> str:
    if ns is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ns / 1e9))


def budget_specs(cfg: PipelineConfig) -> list:
    """The ``BudgetSpec`` of every budget of the config's cost processors."""
    return [b.spec() for settings in processor_settings(cfg, "cost") for b in settings.budgets]
