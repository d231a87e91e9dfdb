"""The shared part of every alert channel exporter: events in, a Notifier, HTTP delivery.

A channel exporter is an ``events`` exporter: ``export`` takes alert events
(``EVENT_SCHEMA``), hands them to its ``Notifier`` (grouping, waits, dedup,
repeats, retries) and returns; a thread ticks the notifier every second and the
subclass's ``deliver`` turns a ``Notification`` into the channel's HTTP request.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from datetime import datetime, timezone

import pyarrow as pa

from agent_sre.exporters.alerting.notifier import Alert, DeliveryError, Notification, Notifier, RoutingConfig
from agent_sre.pipeline.component import SUCCESS, Exporter, ExportResult
from agent_sre.pipeline.component.periodic import PeriodicWorker


def rfc3339(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def post_json(url: str, payload, headers: dict[str, str] | None = None, timeout: float = 10.0) -> bytes:
    """POST JSON; 5xx, 429 and connection errors are retryable DeliveryErrors, other 4xx are not."""
    req = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.read()
    except urllib.error.HTTPError as exc:
        body = exc.read().decode(errors="replace")[:300]
        raise DeliveryError(f"HTTP {exc.code} from {url}: {body}", retryable=exc.code >= 500 or exc.code == 429) from exc
    except (urllib.error.URLError, OSError) as exc:
        raise DeliveryError(f"{url}: {exc}") from exc


def alerts_from_events(batch: pa.Table) -> list[Alert]:
    out = []
    for row in batch.to_pylist():  # events are few: one per transition
        out.append(Alert(fingerprint=row["fingerprint"], state=row["state"], severity=row["severity"] or "",
                         name=row["name"] or "", summary=row["summary"] or "", labels=dict(row["labels"] or []),
                         started_ns=row["started_ns"] or row["time_ns"],
                         ended_ns=row["time_ns"] if row["state"] == "resolved" else None,
                         kind=row["kind"]))
    return out


class ChannelExporter(Exporter):
    """Subclasses set ``config`` (a RoutingConfig with their own fields) and implement ``deliver``."""

    config: RoutingConfig

    def __init__(self, settings, config):
        super().__init__(settings, config)
        self.notifier = Notifier(config, self.deliver)
        self._worker = PeriodicWorker(f"{self.id}-notify", 1.0, lambda: self.notifier.tick(), self.logger)

    def deliver(self, notification: Notification) -> None:
        raise NotImplementedError

    def export(self, batch: pa.Table) -> ExportResult:
        self.notifier.add(alerts_from_events(batch))
        return SUCCESS

    def _start(self, host) -> None:
        self._worker.start()

    def _shutdown(self) -> None:
        self._worker.stop(timeout=30)
        try:  # what is still waiting (group_wait, group_interval) goes out now rather than never
            self.notifier.tick(force=True)
        except Exception:  # noqa: BLE001 - shutting down regardless
            self.logger.exception("final notifications failed")
