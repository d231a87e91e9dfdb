"""The pipeline's own metrics, named like the OpenTelemetry Collector's.

One registry per running service, so tests can run several services in one
process.  Components get the metric objects through ``Settings.telemetry``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest
from prometheus_client.process_collector import ProcessCollector

_SIZE_BUCKETS = (1, 8, 64, 256, 512, 1024, 2048, 4096, 8192, 16384, 65536)
_FAST_BUCKETS = (0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01)
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Telemetry:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        r = self.registry
        self.receiver_accepted = Counter(
            "agent_sre_receiver_accepted_spans", "Spans a receiver accepted and the pipeline committed.",
            ["receiver", "transport"], registry=r)
        self.receiver_refused = Counter(
            "agent_sre_receiver_refused_spans", "Spans a receiver could not push into the pipeline "
            "(refused, invalid or failed), by reason.", ["receiver", "transport", "reason"], registry=r)
        self.receiver_requests = Counter(
            "agent_sre_receiver_requests", "Export requests by outcome (OTLP status).",
            ["receiver", "transport", "outcome"], registry=r)
        self.receiver_admission_refused = Counter(
            "agent_sre_receiver_admission_refused_requests", "Requests refused before they were read: memory "
            "pressure (memory_limiter) or too many request bytes in flight (inflight_bytes).",
            ["receiver", "transport", "reason"], registry=r)
        self.receiver_accepted_points = Counter(
            "agent_sre_receiver_accepted_metric_points", "Metric data points a receiver accepted and the pipeline "
            "committed.", ["receiver", "transport"], registry=r)
        self.receiver_refused_points = Counter(
            "agent_sre_receiver_refused_metric_points", "Metric data points a receiver could not push into the "
            "pipeline, by reason.", ["receiver", "transport", "reason"], registry=r)
        self.receiver_accepted_logs = Counter(
            "agent_sre_receiver_accepted_log_records", "Log records a receiver accepted and the pipeline committed.",
            ["receiver", "transport"], registry=r)
        self.receiver_refused_logs = Counter(
            "agent_sre_receiver_refused_log_records", "Log records a receiver could not push into the pipeline, "
            "by reason.", ["receiver", "transport", "reason"], registry=r)
        self.receiver_reattributed = Counter(
            "agent_sre_receiver_reattributed_spans", "Spans that claimed an agent their API key may not speak "
            "for, stored as the key's own agent (auth on_foreign_agent: reattribute).", ["receiver", "transport"],
            registry=r)
        self.auth_failures = Counter(
            "agent_sre_auth_failures", "Requests refused for want of a valid API key (UNAUTHENTICATED / 401), "
            "by component, transport and reason (missing, invalid).", ["component", "transport", "reason"],
            registry=r)
        self.receiver_dropped_attributes = Counter(
            "agent_sre_receiver_dropped_attributes", "Attributes a receiver dropped over max_attributes_per_span "
            "(span, event and link attributes; each owner's dropped_attributes_count grows).",
            ["receiver", "transport"], registry=r)
        self.receiver_truncated_values = Counter(
            "agent_sre_receiver_truncated_attribute_values", "Attribute values a receiver cut to "
            "max_attribute_value_length (keys listed in agent_sre.truncated_attributes).",
            ["receiver", "transport"], registry=r)
        self.http_connections_closed = Counter(
            "agent_sre_http_connections_closed", "HTTP connections a listener closed or refused: "
            "header_timeout, body_timeout, max_connections (idle ones closed after idle_timeout are not counted).",
            ["endpoint", "reason"], registry=r)
        self.exporter_sent = Counter(
            "agent_sre_exporter_sent_spans", "Spans an exporter sent (or stored) successfully.",
            ["exporter"], registry=r)
        self.exporter_failed = Counter(
            "agent_sre_exporter_send_failed_spans", "Spans an exporter failed to send.",
            ["exporter"], registry=r)
        self.exporter_enqueue_failed = Counter(
            "agent_sre_exporter_enqueue_failed_spans", "Spans an exporter's sending queue refused (full).",
            ["exporter"], registry=r)
        self.exporter_retries = Counter(
            "agent_sre_exporter_retries", "Send attempts an exporter retried after a retryable failure.",
            ["exporter"], registry=r)
        self.exporter_latency = Histogram(
            "agent_sre_exporter_export_latency_seconds", "Time one export call took.",
            ["exporter"], buckets=_LATENCY_BUCKETS, registry=r)
        self.exporter_sent_points = Counter(
            "agent_sre_exporter_sent_metric_points", "Metric points an exporter sent successfully.",
            ["exporter"], registry=r)
        self.exporter_failed_points = Counter(
            "agent_sre_exporter_send_failed_metric_points", "Metric points an exporter failed to send.",
            ["exporter"], registry=r)
        self.exporter_series_overflow = Counter(
            "agent_sre_exporter_series_overflow", "What a metrics exporter folded into a metric's overflow series "
            "(otel_metric_overflow=\"true\") because the metric reached max_series_per_metric: observations "
            "for histograms, the overflow's growth for counters, values per collection for gauges.",
            ["exporter", "metric"], registry=r)
        self.exporter_sent_logs = Counter(
            "agent_sre_exporter_sent_log_records", "Log records an exporter sent (or stored) successfully.",
            ["exporter"], registry=r)
        self.exporter_failed_logs = Counter(
            "agent_sre_exporter_send_failed_log_records", "Log records an exporter failed to send.",
            ["exporter"], registry=r)
        self.exporter_queue = Gauge(
            "agent_sre_exporter_queue_size", "Spans an exporter has accepted durably but not yet delivered "
            "(the duckdb exporter: spooled, not yet inserted).", ["exporter"], registry=r)
        self.attribution_held = Gauge(
            "agent_sre_attribution_held_spans", "Spans without an agent waiting in the store for an ancestor "
            "that has one.", ["exporter"], registry=r)
        self.attribution_unattributed = Gauge(
            "agent_sre_attribution_unattributed_spans", "Spans released without any agent since start (their "
            "trace named none and their service has no name).", ["exporter"], registry=r)
        self.store_resent_spans = Gauge(
            "agent_sre_store_resent_spans", "Spans not stored again since start: copies a client re-sent of spans "
            "the store already had (same trace and span ids, within the dedup window).", ["exporter"], registry=r)
        self.store_unrolled_spans = Gauge(
            "agent_sre_store_unrolled_spans", "Spans stored but not yet rolled up into the SRE loop's tables (SLIs, "
            "budgets, anomaly series): while the loader is behind, the rollup thread takes them every "
            "spool.rollup_interval.", ["exporter"], registry=r)
        self.store_reattached = Gauge(
            "agent_sre_store_reattached", "Times since start the store detached and re-attached its file to free the "
            "row groups' metadata DuckDB keeps in memory while it is attached (every reattach_rows rows).",
            ["exporter"], registry=r)
        self.exporter_queue_capacity = Gauge(
            "agent_sre_exporter_queue_capacity", "Spans the exporter's queue holds before it refuses.",
            ["exporter"], registry=r)
        self.exporter_queue_corrupt = Gauge(
            "agent_sre_exporter_queue_corrupt_records", "Records of an exporter's persistent queue skipped because "
            "they were corrupt (checksum or decoding).", ["exporter"], registry=r)
        self.processor_refused = Counter(
            "agent_sre_processor_refused_spans", "Spans a processor refused (e.g. memory limiter).",
            ["processor"], registry=r)
        self.processor_redacted = Counter(
            "agent_sre_processor_redacted_values", "Values a redaction processor masked, hashed or dropped, by rule "
            "(a pattern name, key, allow_keys or genai_content); never the values.", ["processor", "rule"],
            registry=r)
        self.batch_size = Histogram(
            "agent_sre_processor_batch_batch_send_size", "Spans per batch sent on.",
            ["processor"], buckets=_SIZE_BUCKETS, registry=r)
        self.batch_latency = Histogram(
            "agent_sre_processor_batch_latency_seconds",
            "Time from a request entering the batch to its batch being committed downstream.",
            ["processor"], buckets=_LATENCY_BUCKETS, registry=r)
        self.batch_queue = Gauge(
            "agent_sre_processor_batch_pending_spans", "Spans waiting in the batch.",
            ["processor"], registry=r)
        self.memory_limit_refusing = Gauge(
            "agent_sre_processor_memory_limiter_refusing", "1 while the memory limiter refuses data.",
            ["processor"], registry=r)
        self.memory_limit_level = Gauge(
            "agent_sre_processor_memory_limiter_level",
            "0: accepting, 1: one request at a time (over the soft limit), 2: refusing everything.",
            ["processor"], registry=r)

        self.admin_refused = Counter(
            "agent_sre_admin_refused_requests", "Admin API requests refused or cut by a limit, by reason: host, "
            "origin, content_type (cross-site guards); query_busy, query_queue_timeout, time, memory, read_only, "
            "file_access, store_behind, no_store (ad hoc SQL); result_bytes (answered, truncated).", ["extension", "reason"],
            registry=r)
        self.decision_latency = Histogram(
            "agent_sre_decisions_answer_seconds", "Server time of one GET /v1/decisions/{agent_id} answer.",
            buckets=_FAST_BUCKETS, registry=r)

    def sent(self, signal: str, exporter: str):
        """The exporter's sent counter for a signal: spans, metric points or log records."""
        return {"metrics": self.exporter_sent_points, "logs": self.exporter_sent_logs}.get(
            signal, self.exporter_sent).labels(exporter)

    def failed(self, signal: str, exporter: str):
        return {"metrics": self.exporter_failed_points, "logs": self.exporter_failed_logs}.get(
            signal, self.exporter_failed).labels(exporter)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
