"""file: spans as OTLP/JSON lines, one ExportTraceServiceRequest per line, in the shape the
OpenTelemetry Collector's file exporter writes (and its otlpjsonfile receiver reads), rotating.

The file is rotated when it would grow past ``rotation.max_megabytes``: it is renamed to
``<stem>-<UTC time>.<suffix>`` and a new one started; beyond ``rotation.max_backups`` the oldest
backups are deleted.  Each line is written whole and flushed (``fsync: true`` makes it durable).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from pydantic import Field

from agent_sre.exporters.helper.sender import HelperConfig, QueuedExporter
from agent_sre.pipeline.component import SUCCESS, ExportResult, ExportStatus, Factory, Kind
from agent_sre.pipeline.component.config import ConfigModel
from agent_sre.pipeline.pdata.arrow_otlp import encoded


class Rotation(ConfigModel):
    max_megabytes: float = Field(default=100, gt=0)
    max_backups: int = Field(default=10, ge=0)  # 0: keep every backup


class FileConfig(HelperConfig):
    path: str = "./agent-sre-data/traces.jsonl"
    rotation: Rotation = Rotation()
    fsync: bool = False


class FileExporter(QueuedExporter):
    config: FileConfig

    def _start_client(self, host) -> None:
        self._path = Path(self.config.path)
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()  # consumers write whole lines, one at a time
        self._file = open(self._path, "ab")

    def _stop_client(self) -> None:
        with self._lock:
            self._file.close()

    def send(self, batch) -> ExportResult:
        line = encoded(batch, "json") + b"\n"
        try:
            with self._lock:
                if self._file.tell() and self._file.tell() + len(line) > self.config.rotation.max_megabytes * 2**20:
                    self._rotate()
                self._file.write(line)
                self._file.flush()
                if self.config.fsync:
                    os.fsync(self._file.fileno())
        except OSError as exc:  # disk full, permissions: tried again by the helper
            return ExportResult(ExportStatus.RETRYABLE, f"{self._path}: {exc}")
        return SUCCESS

    def _rotate(self) -> None:
        self._file.close()
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + f"{time.time() % 1:.6f}"[1:]
        self._path.rename(self._path.with_name(f"{self._path.stem}-{stamp}{self._path.suffix}"))
        self._file = open(self._path, "ab")
        keep = self.config.rotation.max_backups
        backups = sorted(self._path.parent.glob(f"{self._path.stem}-*{self._path.suffix}"))
        for old in backups[:-keep] if keep else []:
            old.unlink(missing_ok=True)

    def describe(self) -> list[str]:
        return [f"{self.id}: OTLP/JSON lines in {self.config.path}"]


factory = Factory(type="file", kind=Kind.EXPORTER, config_model=FileConfig, create=FileExporter,
                  description="Spans as OTLP/JSON lines (the collector's file exporter format), rotating.")
