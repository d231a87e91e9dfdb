"""OTLP metrics and logs <-> Arrow (``METRIC_SCHEMA``, ``LOG_SCHEMA``): the one place for both signals.

In: ``metrics_request_to_table`` (one row per data point, of every metric type) and
``logs_request_to_table`` (one row per log record).  Invalid items are rejected one by one and
counted for ``partial_success``, as for spans: a metric without a name, a log record whose
trace_id is not 0 or 16 bytes or span_id not 0 or 8, a time past int64.

Out: ``table_to_metrics_request`` / ``table_to_logs_request`` build the OTLP requests again for
exporters, per data point and per record with the protobuf classes (metrics and logs are far
fewer than spans; measured in docs/benchmarks.md).  Attribute values follow the spans' rule
(pipeline/pdata/arrow_otlp.py): typed where the normalisation table knows the key, else strings.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pyarrow as pa
from google.protobuf import json_format
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import (
    AnyValue,
    ArrayValue,
    InstrumentationScope,
    KeyValue,
    KeyValueList,
)
from opentelemetry.proto.logs.v1.logs_pb2 import SEVERITY_NUMBER_UNSPECIFIED, LogRecord
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from agent_sre.pipeline.pdata.arrow_otlp import any_value, typed_keys
from agent_sre.pipeline.pdata.otlp_arrow import _INT64_MAX, Conversion, attributes_to_dict, value_to_str
from agent_sre.pipeline.pdata.schema import LOG_SCHEMA, METRIC_SCHEMA

TEMPORALITY = ("unspecified", "delta", "cumulative")
_MAX_REASONS = 3


def _time(t: int) -> int | None:
    return t if t <= _INT64_MAX else None


def _finish(rows: dict[str, list], schema: pa.Schema, rejected: int, reasons: list[str], what: str) -> Conversion:
    table = pa.Table.from_pydict({f.name: rows[f.name] for f in schema}, schema=schema)
    message = f"rejected {rejected} invalid {what}: " + "; ".join(reasons[:_MAX_REASONS]) if rejected else ""
    return Conversion(table, rejected, message)


def _columns(schema: pa.Schema) -> dict[str, list]:
    return {f.name: [] for f in schema}


# --- metrics in ---------------------------------------------------------------------------

_NUMBER_TYPES = ("gauge", "sum")
_EMPTY: dict[str, Any] = {"value": None, "int_value": None, "count": None, "sum": None, "min": None, "max": None,
          "bucket_counts": None, "explicit_bounds": None, "scale": None, "zero_count": None, "zero_threshold": None,
          "positive_offset": None, "positive_bucket_counts": None, "negative_offset": None,
          "negative_bucket_counts": None, "quantiles": None, "temporality": None, "is_monotonic": None}


def _point_fields(kind: str, data, point) -> dict:
    out = dict(_EMPTY)
    if kind in ("sum", "histogram", "exponential_histogram"):
        out["temporality"] = TEMPORALITY[data.aggregation_temporality] if data.aggregation_temporality < 3 \
            else f"temporality_{data.aggregation_temporality}"
    if kind == "sum":
        out["is_monotonic"] = data.is_monotonic
    if kind in _NUMBER_TYPES:
        if point.WhichOneof("value") == "as_int":
            out["int_value"] = point.as_int
            out["value"] = float(point.as_int)
        else:
            out["value"] = point.as_double
        return out
    out["count"] = point.count if point.count <= _INT64_MAX else None
    out["sum"] = point.sum if kind == "summary" or point.HasField("sum") else None
    if kind != "summary":
        out["min"] = point.min if point.HasField("min") else None
        out["max"] = point.max if point.HasField("max") else None
    if kind == "histogram":
        out["bucket_counts"] = list(point.bucket_counts)
        out["explicit_bounds"] = list(point.explicit_bounds)
    elif kind == "exponential_histogram":
        out.update(scale=point.scale, zero_count=point.zero_count, zero_threshold=point.zero_threshold,
                   positive_offset=point.positive.offset, positive_bucket_counts=list(point.positive.bucket_counts),
                   negative_offset=point.negative.offset, negative_bucket_counts=list(point.negative.bucket_counts))
    else:
        out["quantiles"] = [{"quantile": q.quantile, "value": q.value} for q in point.quantile_values]
    return out


def metrics_request_to_table(request: ExportMetricsServiceRequest) -> Conversion:
    rows = _columns(METRIC_SCHEMA)
    rejected, reasons = 0, []
    for rm in request.resource_metrics:
        res = attributes_to_dict(rm.resource.attributes)
        service = res.get("service.name")
        for sm in rm.scope_metrics:
            scope_attrs = attributes_to_dict(sm.scope.attributes)
            for metric in sm.metrics:
                kind = metric.WhichOneof("data")
                points = list(getattr(metric, kind).data_points) if kind else []
                if not metric.name or kind is None:
                    rejected += max(len(points), 1)
                    reasons.append(f"metric {metric.name!r}: " + ("a metric needs a name" if not metric.name
                                                                  else "no data (gauge, sum, histogram, ...)"))
                    continue
                data = getattr(metric, kind)
                meta = attributes_to_dict(metric.metadata)
                for point in points:
                    t, start = _time(point.time_unix_nano), _time(point.start_time_unix_nano)
                    if t is None or (point.start_time_unix_nano and start is None):
                        rejected += 1
                        reasons.append(f"metric {metric.name!r}: a time beyond 2262-04-11 (int64 nanoseconds)")
                        continue
                    fields = _point_fields(kind, data, point)
                    exemplars = getattr(point, "exemplars", ())
                    fields.update(
                        time_ns=t, start_time_ns=start, metric_name=metric.name, description=metric.description,
                        unit=metric.unit, metric_type=kind, flags=point.flags,
                        exemplars=json.dumps([json_format.MessageToDict(e) for e in exemplars]) if exemplars else None,
                        attributes=attributes_to_dict(point.attributes), metric_metadata=meta, service_name=service,
                        resource_attributes=res, scope_name=sm.scope.name, scope_version=sm.scope.version,
                        scope_attributes=scope_attrs)
                    for name, value in fields.items():
                        rows[name].append(list(value.items()) if isinstance(value, dict) and name in
                                          ("attributes", "metric_metadata", "resource_attributes",
                                           "scope_attributes") else value)
    return _finish(rows, METRIC_SCHEMA, rejected, reasons, "data point(s)")


# --- logs in ------------------------------------------------------------------------------


def _body(value: AnyValue) -> tuple[str | None, str]:
    which = value.WhichOneof("value")
    kind = {"string_value": "string", "int_value": "int", "double_value": "double", "bool_value": "bool",
            "bytes_value": "bytes", "array_value": "array", "kvlist_value": "kvlist"}.get(which or "", "empty")
    return value_to_str(value), kind


def logs_request_to_table(request: ExportLogsServiceRequest) -> Conversion:
    rows = _columns(LOG_SCHEMA)
    rejected, reasons = 0, []
    for rl in request.resource_logs:
        res = list(attributes_to_dict(rl.resource.attributes).items())
        service = dict(res).get("service.name")
        for sl in rl.scope_logs:
            scope_attrs = list(attributes_to_dict(sl.scope.attributes).items())
            for rec in sl.log_records:
                tid, sid = rec.trace_id, rec.span_id
                t, observed = _time(rec.time_unix_nano), _time(rec.observed_time_unix_nano)
                problem = (f"trace_id must be empty or 16 bytes, got {len(tid)}" if len(tid) not in (0, 16)
                           else f"span_id must be empty or 8 bytes, got {len(sid)}" if len(sid) not in (0, 8)
                           else "a time beyond 2262-04-11 (int64 nanoseconds)" if t is None or observed is None
                           else None)
                if problem:
                    rejected += 1
                    reasons.append(f"log record {rec.event_name or rec.severity_text or ''!r}: {problem}")
                    continue
                body, body_type = _body(rec.body)
                for name, value in (("time_ns", t), ("observed_time_ns", observed),
                                    ("severity_number", rec.severity_number), ("severity_text", rec.severity_text),
                                    ("event_name", rec.event_name or None), ("body", body), ("body_type", body_type),
                                    ("trace_id", tid.hex() if tid and any(tid) else None),
                                    ("span_id", sid.hex() if sid and any(sid) else None), ("flags", rec.flags),
                                    ("attributes", list(attributes_to_dict(rec.attributes).items())),
                                    ("dropped_attributes_count", rec.dropped_attributes_count),
                                    ("service_name", service), ("resource_attributes", res),
                                    ("scope_name", sl.scope.name), ("scope_version", sl.scope.version),
                                    ("scope_attributes", scope_attrs)):
                    rows[name].append(value)
    return _finish(rows, LOG_SCHEMA, rejected, reasons, "log record(s)")


# --- out: the requests again, for exporters ---------------------------------------------------


def _kvs(pairs, types: dict[str, str]) -> list[KeyValue]:
    return [KeyValue(key=k, value=any_value(k, v, types)) for k, v in pairs or ()]


def _json_any(value) -> AnyValue:
    if value is None:
        return AnyValue()
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, list):
        return AnyValue(array_value=ArrayValue(values=[_json_any(v) for v in value]))
    if isinstance(value, dict):
        return AnyValue(kvlist_value=KeyValueList(values=[KeyValue(key=k, value=_json_any(v)) for k, v in value.items()]))
    if value in ("NaN", "Infinity", "-Infinity"):
        return AnyValue(double_value=float(value.replace("Infinity", "inf")))
    return AnyValue(string_value=str(value))


def body_value(text: str | None, kind: str) -> AnyValue:
    """A stored body back to its AnyValue (arrays and maps from their JSON; bytes inside them come
    back as their base64 text)."""
    if text is None or kind == "empty":
        return AnyValue()
    if kind == "int":
        return AnyValue(int_value=int(text))
    if kind == "double":
        return AnyValue(double_value=float(text.replace("Infinity", "inf")))
    if kind == "bool":
        return AnyValue(bool_value=text == "true")
    if kind == "bytes":
        return AnyValue(bytes_value=base64.b64decode(text))
    if kind in ("array", "kvlist"):
        return _json_any(json.loads(text))
    return AnyValue(string_value=text)


def _groups(rows: list[dict]):
    """Consecutive runs of the same resource, then scope: (resource attrs, scope key, rows)."""
    out: list[tuple[list, tuple, list[dict]]] = []
    for r in rows:
        res = r["resource_attributes"] or []
        scope = (r["scope_name"] or "", r["scope_version"] or "", tuple(r["scope_attributes"] or ()))
        if out and out[-1][0] == res and out[-1][1] == scope:
            out[-1][2].append(r)
        else:
            out.append((res, scope, [r]))
    return out


def _scoped(resources, scope_field: str, table: pa.Table, types: dict[str, str]):
    """(the new Scope* message, its rows) for each run of rows: a Resource* message is added to
    ``resources`` (request.resource_logs or .resource_metrics) whenever the resource changes."""
    parent, last = None, None
    for res, scope, rows in _groups(table.to_pylist()):
        if parent is None or res != last:
            parent, last = resources.add(resource=Resource(attributes=_kvs(res, types))), res
        yield getattr(parent, scope_field).add(scope=InstrumentationScope(
            name=scope[0], version=scope[1], attributes=_kvs(scope[2], types))), rows


def table_to_logs_request(table: pa.Table) -> ExportLogsServiceRequest:
    types = typed_keys()
    request = ExportLogsServiceRequest()
    for sl, records in _scoped(request.resource_logs, "scope_logs", table, types):
        sl.log_records.extend(LogRecord(
            time_unix_nano=r["time_ns"] or 0, observed_time_unix_nano=r["observed_time_ns"] or 0,
            severity_number=r["severity_number"] or SEVERITY_NUMBER_UNSPECIFIED,
            severity_text=r["severity_text"] or "",
            event_name=r["event_name"] or "", body=body_value(r["body"], r["body_type"] or "string"),
            attributes=_kvs(r["attributes"], types), dropped_attributes_count=r["dropped_attributes_count"] or 0,
            flags=r["flags"] or 0, trace_id=bytes.fromhex(r["trace_id"]) if r["trace_id"] else b"",
            span_id=bytes.fromhex(r["span_id"]) if r["span_id"] else b"") for r in records)
    return request


def _point(kind: str, r: dict, types: dict[str, str]):
    common: dict[str, Any] = {  # keywords common to every point type
        "attributes": _kvs(r["attributes"], types), "time_unix_nano": r["time_ns"] or 0,
        "start_time_unix_nano": r["start_time_ns"] or 0, "flags": r["flags"] or 0}
    exemplars = [json_format.ParseDict(e, metrics_pb2.Exemplar()) for e in json.loads(r["exemplars"])] \
        if r["exemplars"] else []
    if kind in _NUMBER_TYPES:
        value = {"as_int": r["int_value"]} if r["int_value"] is not None else {"as_double": r["value"] or 0.0}
        return metrics_pb2.NumberDataPoint(**common, **value, exemplars=exemplars)
    extra = {k: r[k] for k in ("min", "max") if r[k] is not None} if kind != "summary" else {}
    if kind != "summary" and r["sum"] is not None:
        extra["sum"] = r["sum"]
    if kind == "histogram":
        return metrics_pb2.HistogramDataPoint(**common, count=r["count"] or 0, bucket_counts=r["bucket_counts"] or [],
                                              explicit_bounds=r["explicit_bounds"] or [], exemplars=exemplars, **extra)
    if kind == "exponential_histogram":
        Buckets = metrics_pb2.ExponentialHistogramDataPoint.Buckets
        return metrics_pb2.ExponentialHistogramDataPoint(
            **common, count=r["count"] or 0, scale=r["scale"] or 0, zero_count=r["zero_count"] or 0,
            zero_threshold=r["zero_threshold"] or 0.0, exemplars=exemplars,
            positive=Buckets(offset=r["positive_offset"] or 0, bucket_counts=r["positive_bucket_counts"] or []),
            negative=Buckets(offset=r["negative_offset"] or 0, bucket_counts=r["negative_bucket_counts"] or []),
            **extra)
    return metrics_pb2.SummaryDataPoint(**common, count=r["count"] or 0, sum=r["sum"] or 0.0, quantile_values=[
        metrics_pb2.SummaryDataPoint.ValueAtQuantile(quantile=q["quantile"], value=q["value"])
        for q in r["quantiles"] or ()])


def table_to_metrics_request(table: pa.Table) -> ExportMetricsServiceRequest:
    types = typed_keys()
    request = ExportMetricsServiceRequest()
    for sm, points in _scoped(request.resource_metrics, "scope_metrics", table, types):
        metric = None
        for r in points:  # consecutive points of one metric go into one Metric
            key = (r["metric_name"], r["description"], r["unit"], r["metric_type"], r["temporality"],
                   r["is_monotonic"], tuple(r["metric_metadata"] or ()))
            if metric is None or metric[0] != key:
                kind = r["metric_type"]
                m = sm.metrics.add(name=r["metric_name"], description=r["description"] or "", unit=r["unit"] or "",
                                   metadata=_kvs(r["metric_metadata"], types))
                data = getattr(m, kind)
                data.SetInParent()
                if kind in ("sum", "histogram", "exponential_histogram") and r["temporality"] in TEMPORALITY:
                    data.aggregation_temporality = TEMPORALITY.index(r["temporality"])
                if kind == "sum":
                    data.is_monotonic = bool(r["is_monotonic"])
                metric = (key, data)
            metric[1].data_points.append(_point(r["metric_type"], r, types))
    return request
