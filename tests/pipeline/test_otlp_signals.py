"""Metrics and logs to Arrow and back: every metric type and every log body type survives a round
trip (rows -> OTLP request -> rows gives the same rows); invalid items are rejected one by one."""

from __future__ import annotations

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue, KeyValueList
from opentelemetry.proto.metrics.v1 import metrics_pb2 as m

from agent_sre.pipeline.pdata.otlp_signals import (
    logs_request_to_table,
    metrics_request_to_table,
    table_to_logs_request,
    table_to_metrics_request,
)
from tests.otlp_builders import kv

T = 1_700_000_000_000_000_000


def metrics_request() -> ExportMetricsServiceRequest:
    req = ExportMetricsServiceRequest()
    rm = req.resource_metrics.add()
    rm.resource.attributes.append(kv("service.name", "agent"))
    sm = rm.scope_metrics.add()
    sm.scope.name, sm.scope.version = "gen_ai", "1.0"
    attrs = [kv("gen_ai.request.model", "gpt-4o")]
    ex = m.Exemplar(time_unix_nano=T, as_double=2.5, span_id=b"\x01" * 8, trace_id=b"\x02" * 16)
    sm.metrics.add(name="queue.depth", unit="1", gauge=m.Gauge(data_points=[
        m.NumberDataPoint(time_unix_nano=T, as_int=7, attributes=attrs, exemplars=[ex])]))
    sm.metrics.add(name="cost", description="USD", sum=m.Sum(aggregation_temporality=1, is_monotonic=True, data_points=[
        m.NumberDataPoint(time_unix_nano=T, start_time_unix_nano=T - 10, as_double=0.25)]))
    sm.metrics.add(name="gen_ai.client.operation.duration", unit="s", histogram=m.Histogram(
        aggregation_temporality=2, data_points=[m.HistogramDataPoint(
            time_unix_nano=T, count=3, sum=1.5, min=0.1, max=1.0, bucket_counts=[1, 2, 0],
            explicit_bounds=[0.5, 1.0], attributes=attrs)]))
    sm.metrics.add(name="latency", exponential_histogram=m.ExponentialHistogram(aggregation_temporality=1, data_points=[
        m.ExponentialHistogramDataPoint(time_unix_nano=T, count=4, sum=9.0, scale=2, zero_count=1,
                                        positive=m.ExponentialHistogramDataPoint.Buckets(offset=3, bucket_counts=[1, 2]),
                                        negative=m.ExponentialHistogramDataPoint.Buckets(offset=-1, bucket_counts=[0]))]))
    sm.metrics.add(name="p", summary=m.Summary(data_points=[m.SummaryDataPoint(
        time_unix_nano=T, count=10, sum=5.0, quantile_values=[m.SummaryDataPoint.ValueAtQuantile(quantile=0.99,
                                                                                                   value=0.9)])]))
    sm.metrics.add(name="", gauge=m.Gauge(data_points=[m.NumberDataPoint(time_unix_nano=T, as_int=1)]))  # invalid
    return req


def test_every_metric_type_round_trips_and_a_nameless_metric_is_rejected():
    conv = metrics_request_to_table(metrics_request())
    assert (conv.accepted, conv.rejected) == (5, 1) and "a metric needs a name" in conv.message
    rows = conv.table.to_pylist()
    assert [r["metric_type"] for r in rows] == ["gauge", "sum", "histogram", "exponential_histogram", "summary"]
    assert (rows[0]["int_value"], rows[0]["value"], rows[1]["temporality"], rows[1]["is_monotonic"]) == (
        7, 7.0, "delta", True)
    assert (rows[2]["bucket_counts"], rows[2]["explicit_bounds"], rows[2]["min"]) == ([1, 2, 0], [0.5, 1.0], 0.1)
    assert rows[3]["positive_bucket_counts"] == [1, 2] and rows[4]["quantiles"] == [{"quantile": 0.99, "value": 0.9}]
    again = metrics_request_to_table(table_to_metrics_request(conv.table))
    assert again.rejected == 0 and again.table.to_pylist() == rows


def test_every_log_body_round_trips_and_bad_ids_are_rejected():
    req = ExportLogsServiceRequest()
    rl = req.resource_logs.add()
    rl.resource.attributes.append(kv("service.name", "agent"))
    records = rl.scope_logs.add().log_records
    bodies = [AnyValue(string_value="hi"), AnyValue(int_value=-3), AnyValue(double_value=0.5),
              AnyValue(bool_value=True), AnyValue(bytes_value=b"\x00\x01"), AnyValue(),
              AnyValue(array_value=ArrayValue(values=[AnyValue(int_value=1), AnyValue(string_value="x")])),
              AnyValue(kvlist_value=KeyValueList(values=[KeyValue(key="role", value=AnyValue(string_value="user"))]))]
    for i, body in enumerate(bodies):
        records.add(time_unix_nano=T + i, body=body, severity_number=9, event_name="gen_ai.choice" if i else "",
                    trace_id=b"\x03" * 16, span_id=b"\x04" * 8, attributes=[kv("n", i)])
    records.add(time_unix_nano=T, span_id=b"\x04" * 7)  # invalid
    conv = logs_request_to_table(req)
    assert (conv.accepted, conv.rejected) == (8, 1)
    rows = conv.table.to_pylist()
    assert [r["body_type"] for r in rows] == ["string", "int", "double", "bool", "bytes", "empty", "array", "kvlist"]
    assert rows[6]["body"] == '[1,"x"]' and rows[7]["body"] == '{"role":"user"}' and rows[0]["event_name"] is None
    assert (rows[1]["trace_id"], rows[1]["span_id"]) == ("03" * 16, "04" * 8)
    again = logs_request_to_table(table_to_logs_request(conv.table))
    assert again.table.to_pylist() == rows
