"""Fuzzing the OTLP receivers: mutated valid requests never crash, hang or lose a valid span.

Cases are mutations of the seed corpus (``fuzz_corpus/``, see ``fuzz_helpers``), in total
``AGENT_SRE_FUZZ_CASES`` (default 10,000) from ``AGENT_SRE_FUZZ_SEED`` (default "0"), shared out as
``SHARES`` says: half through ``Ingest`` (the receivers' decode entry point) in this process, half
over real sockets to running pipelines (``agent-sre run``): gRPC to one whose servers run in the
pipeline process, HTTP protobuf and JSON to one decoding in a receiver worker process.  Each run
sends the corpus files as they are first.  The oracle for every case:

* the answer is OK (maybe with ``partial_success``), INVALID_ARGUMENT / 400, or RESOURCE_EXHAUSTED /
  413 with a google.rpc.Status body; never INTERNAL / 500, UNAVAILABLE / 503 or anything else;
* no hang: each request has a deadline (in process: a case taking longer counts as a hang);
* nothing acknowledged is lost: accepted + rejected = the spans in the request, and after the run
  the store holds exactly the accepted spans; the pipeline process is alive and healthy;
* in process, the answer is protobuf's own parser's (refused exactly when it cannot parse) and
  the rows kept are the plain converter's, so the columnar attribute decoder is checked too.

A failure names the case and saves its body under the test's temporary directory; rerun one case
with ``fuzz_helpers.mutate_protobuf(random.Random(f"{seed}:{transport}:{case}"), seeds)`` (or
``mutate_json``).  Hypothesis property tests over the decoders close the file.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import http.client
import json
import logging
import math
import os
import random
import threading
import time
import traceback
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pyarrow as pa
import pytest
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from google.rpc import code_pb2, status_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from agent_sre.pipeline.pdata.otlp_arrow import request_to_table
from agent_sre.pipeline.pdata.otlp_json import OtlpJsonError, decode_trace_request, encode_trace_request
from agent_sre.pipeline.pdata.schema import SPAN_SCHEMA
from agent_sre.receivers.otlp.ingest import ExportFailed, Ingest, Outcome
from tests.conftest import PipelineProcess, Ports, pipeline_yaml, spawn_pipeline
from tests.receivers.otlp.fuzz_helpers import (
    CORPUS,
    Case,
    load_corpus,
    mixed_request,
    mutate_json,
    mutate_protobuf,
)

SEED = os.environ.get("AGENT_SRE_FUZZ_SEED", "0")
CASES = int(os.environ.get("AGENT_SRE_FUZZ_CASES", "10000"))
DEADLINE_S = 10.0  # per request: longer is a hang
IN_PROCESS_HANG_S = 5.0
METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
PROTOBUF, JSON = "application/x-protobuf", "application/json"

# The socket runs cost about as much per case as the in-process ones (they use both cores).
SHARES = {"ingest-protobuf": 0.30, "ingest-json": 0.20, "grpc": 0.20, "http-protobuf": 0.15, "http-json": 0.15}
BODY_LIMIT_MIB = 0.5  # both receivers: the bodies nested 100,000 deep are over it, so 413 is reached too


def cases_for(transport: str) -> int:
    return max(1, round(CASES * SHARES[transport]))


def generate(transport: str) -> Iterator[tuple[int, Case]]:
    """The corpus as it is first (regression cases included), then the mutations."""
    suffix = ".json" if transport.endswith("json") else ".pb"
    for i, body in enumerate(load_corpus(suffix)):
        yield -1 - i, Case(body, ["corpus"])
    seeds = load_corpus(suffix, seeds_only=True)
    mutate = mutate_json if suffix == ".json" else mutate_protobuf
    for i in range(cases_for(transport)):
        yield i, mutate(random.Random(f"{SEED}:{transport}:{i}"), seeds)


@dataclass
class Ledger:
    """What one run sent and was told, and what went wrong."""

    transport: str
    save_dir: Path
    outcomes: dict[str, int] = field(default_factory=dict)
    accepted: int = 0  # spans the receiver acknowledged
    failures: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def outcome(self, name: str, accepted: int = 0) -> None:
        with self._lock:
            self.outcomes[name] = self.outcomes.get(name, 0) + 1
            self.accepted += accepted

    def fail(self, number: int, case: Case, problem: str) -> None:
        with self._lock:
            self.save_dir.mkdir(parents=True, exist_ok=True)
            path = self.save_dir / f"{self.transport}-{number}.bin"
            path.write_bytes(case.body)
            self.failures.append(f"case {number} ({'+'.join(case.operators)}, {len(case.body)} bytes, {path}): "
                                 f"{problem}")

    def check(self) -> None:
        total = sum(self.outcomes.values())
        print(f"{self.transport}: {total} cases, answers {self.outcomes}, {self.accepted} spans acknowledged")
        assert not self.failures, (f"{len(self.failures)} of {total} {self.transport} cases failed "
                                   f"(AGENT_SRE_FUZZ_SEED={SEED}):\n" + "\n".join(self.failures[:15]))
        assert total >= cases_for(self.transport)
        # The mix must reach every answer a receiver gives, or the oracle is checking little.
        assert {"ok", "partial_success", "invalid"} <= set(self.outcomes), self.outcomes


def span_count(body: bytes, json_body: bool) -> int | None:
    """Spans in a request as protobuf's own parser (or the JSON decoder) sees it; None if it cannot parse."""
    try:
        request = decode_trace_request(body) if json_body else ExportTraceServiceRequest.FromString(body)
    except (DecodeError, OtlpJsonError):
        return None
    return sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)


def check_acknowledged(ledger: Ledger, number: int, case: Case, json_body: bool, rejected: int) -> None:
    """An OK answer: every span in the request was either accepted or counted as rejected."""
    spans = span_count(case.body, json_body)
    if spans is None:
        ledger.fail(number, case, "acknowledged a body that the protobuf parser rejects")
    elif rejected > spans:
        ledger.fail(number, case, f"rejected {rejected} of {spans} spans")
    else:
        ledger.outcome("partial_success" if rejected else "ok", spans - rejected)


# --- in process: Ingest, the receivers' decode entry point ------------------------------------


class _NoStats:
    def count(self, metric: str, labels: tuple[str, ...], n: int = 1) -> None:
        pass


class CheckingConsumer:
    """Takes the table a receiver hands to the pipeline and checks it is a valid span table."""

    def __init__(self) -> None:
        self.last: pa.Table | None = None

    def consume(self, table: pa.Table) -> None:
        assert table.schema.equals(SPAN_SCHEMA), table.schema
        table.validate(full=True)
        self.last = table


def _quiet_logger() -> logging.Logger:
    logger = logging.getLogger("agent_sre.tests.fuzz")
    logger.disabled = True  # a warning per invalid case would be 10,000 log records
    return logger


def plain_conversion(body: bytes, json_body: bool) -> tuple[int, pa.Table | None, int] | None:
    """(spans, rows kept, spans rejected) as protobuf's own parser and the plain converter see a
    body (for JSON the spans only: the receiver decodes it the same way); None if it cannot parse."""
    try:
        request = decode_trace_request(body) if json_body else ExportTraceServiceRequest.FromString(body)
    except (DecodeError, OtlpJsonError):
        return None
    spans = sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
    if json_body:
        return spans, None, 0
    conv = request_to_table(request)
    return spans, conv.table, conv.rejected


def in_process_answer(ingest: Ingest, consumer: CheckingConsumer, body: bytes, json_body: bool) -> tuple[str, str]:
    """(the receiver's answer to one body, what is wrong with it or ""); the spans it kept are in
    ``consumer.last``.

    The answer is compared with protobuf's own parser and the plain converter (for JSON: the
    decoder and the plain converter): refused exactly when they cannot parse, and else the same
    rows kept and the same number rejected, so the columnar path (shadow request, vectorised
    attributes) is checked as well."""
    consumer.last = None
    try:
        response = (ingest.export_json if json_body else ingest.export_protobuf)(body, "fuzz")
    except ExportFailed as exc:
        if exc.outcome is not Outcome.INVALID:
            return exc.outcome.value, f"answered {exc.outcome.value}: {exc}"
        accepted_by_parser = plain_conversion(body, json_body) is not None
        return "invalid", "protobuf's parser accepts the body, the receiver refused it" if accepted_by_parser else ""
    except Exception:  # noqa: BLE001 - the finding itself
        return "crash", "raised " + traceback.format_exc(limit=-4)
    rejected = response.partial_success.rejected_spans
    answer = "partial_success" if rejected else "ok"
    plain = plain_conversion(body, json_body)
    if plain is None:
        return answer, "acknowledged a body that protobuf's parser refuses"
    spans, plain_rows, plain_rejected = plain
    kept = consumer.last.num_rows if consumer.last is not None else 0
    if rejected + kept != spans:
        return answer, f"{spans} spans, {rejected} rejected, {kept} kept"
    if plain_rows is not None and (rejected != plain_rejected or not (
            plain_rows.num_rows == 0 if consumer.last is None else consumer.last.equals(plain_rows))):
        return answer, "the rows kept differ from the plain converter's"
    return answer, ""


def run_in_process(transport: str, tmp_path: Path) -> Ledger:
    json_body = transport == "ingest-json"
    consumer = CheckingConsumer()
    ingest = Ingest("otlp", consumer, _NoStats(), _quiet_logger())
    ledger = Ledger(transport, tmp_path / "failures")
    for number, case in generate(transport):
        started = time.monotonic()
        answer, problem = in_process_answer(ingest, consumer, case.body, json_body)
        elapsed = time.monotonic() - started
        if not problem and elapsed > IN_PROCESS_HANG_S:
            problem = f"took {elapsed:.1f}s (a hang)"
        if problem:
            ledger.fail(number, case, problem)
        ledger.outcome(answer, consumer.last.num_rows if consumer.last is not None else 0)
    return ledger


def test_mutated_protobuf_requests_are_answered_ok_or_invalid_and_every_span_is_accounted_for(tmp_path):
    run_in_process("ingest-protobuf", tmp_path).check()


def test_mutated_json_requests_are_answered_ok_or_invalid_and_every_span_is_accounted_for(tmp_path):
    run_in_process("ingest-json", tmp_path).check()


# --- over the sockets of running pipelines -------------------------------------------------------


def _start(tmp_path_factory, name: str, workers: int) -> Iterator[PipelineProcess]:
    data_dir = tmp_path_factory.mktemp(name)
    ports = Ports.allocate()
    # Retention off: fuzzed spans may carry any timestamp, and every acknowledged one is counted.  Dedup
    # off: mutations of one request keep its valid spans' ids, and each acknowledged copy is counted here
    # (tests/pipeline/storage/test_dedup.py holds the store to one copy of a re-send).
    config = pipeline_yaml(ports, data_dir, workers=workers, grpc_mib=BODY_LIMIT_MIB,
                           http_body=int(BODY_LIMIT_MIB * (1 << 20))).replace(
        "spans.duckdb\n", "spans.duckdb\n    retention: 0s\n    dedup: {window: 0s}\n", 1)
    process = spawn_pipeline(config, ports, data_dir, data_dir / "pipeline.log")
    yield process
    process.proc.terminate()
    process.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def grpc_pipeline(tmp_path_factory) -> Iterator[PipelineProcess]:
    yield from _start(tmp_path_factory, "fuzz-grpc", workers=0)  # servers in the pipeline process


@pytest.fixture(scope="module")
def http_pipeline(tmp_path_factory) -> Iterator[PipelineProcess]:
    yield from _start(tmp_path_factory, "fuzz-http", workers=1)  # decoding in a receiver worker process


def stored(p: PipelineProcess, where: str = "true") -> int:
    body = json.dumps({"sql": f"SELECT count(*) FROM spans WHERE {where}"}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{p.ports.admin}/v1/query", data=body,
                                 headers={"Content-Type": JSON})
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read())["rows"][0][0]


def assert_alive_and_healthy(p: PipelineProcess) -> None:
    assert p.proc.poll() is None, f"pipeline exited with {p.proc.returncode}:\n{_log_tail(p)}"
    with urllib.request.urlopen(f"http://127.0.0.1:{p.ports.admin}/", timeout=10) as resp:
        assert resp.status == 200


def _log_tail(p: PipelineProcess) -> str:
    return (p.data_dir / "pipeline.log").read_text(errors="replace")[-3000:]


def run_concurrently(send: Callable[[int, Case], None], cases: Iterator[tuple[int, Case]], threads: int = 8) -> None:
    with ThreadPoolExecutor(threads) as pool:
        for future in [pool.submit(send, number, case) for number, case in cases]:
            future.result()


@contextlib.contextmanager
def grpc_export(port: int) -> Iterator[Callable[..., ExportTraceServiceResponse]]:
    """TraceService/Export on one channel, sending raw bytes."""
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 64 << 20)]) as ch:
        yield ch.unary_unary(METHOD, request_serializer=None, response_deserializer=ExportTraceServiceResponse.FromString)


def grpc_sender(call: Callable[..., ExportTraceServiceResponse], ledger: Ledger) -> Callable[[int, Case], None]:
    def send(number: int, case: Case) -> None:
        try:
            response = call(case.body, timeout=DEADLINE_S)
        except grpc.RpcError as exc:
            code = exc.code()  # type: ignore[attr-defined]
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                ledger.outcome("invalid")
            elif code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                ledger.outcome("too_large")
            elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
                ledger.fail(number, case, f"no answer within {DEADLINE_S}s (a hang)")
            else:
                ledger.fail(number, case, f"answered {code.name}: {exc.details()}")  # type: ignore[attr-defined]
            return
        check_acknowledged(ledger, number, case, False, response.partial_success.rejected_spans)

    return send


_local = threading.local()


def _post(port: int, body: bytes, content_type: str) -> tuple[int, str, bytes]:
    """One POST on this thread's keep-alive connection (a new one if the server closed it)."""
    for attempt in range(2):
        conn = getattr(_local, "conn", None)
        if conn is None or conn.port != port:
            conn = _local.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=DEADLINE_S)
        try:
            conn.request("POST", "/v1/traces", body, {"Content-Type": content_type})
            resp = conn.getresponse()
            return resp.status, resp.getheader("Content-Type", ""), resp.read()
        except (ConnectionError, http.client.RemoteDisconnected, http.client.BadStatusLine):
            conn.close()
            _local.conn = None
            if attempt:
                raise
    raise AssertionError("unreachable")


def http_sender(port: int, ledger: Ledger, content_type: str) -> Callable[[int, Case], None]:
    json_body = content_type == JSON

    def send(number: int, case: Case) -> None:
        try:
            status, reply_type, body = _post(port, case.body, content_type)
        except TimeoutError:
            ledger.fail(number, case, f"no answer within {DEADLINE_S}s (a hang)")
            return
        except OSError as exc:
            ledger.fail(number, case, f"connection failed: {exc!r}")
            return
        if reply_type != content_type:
            ledger.fail(number, case, f"answered {status} in {reply_type!r}")
        elif status == 200:
            if json_body:
                answer = json.loads(body).get("partialSuccess", {})
                rejected = int(answer.get("rejectedSpans", 0))
            else:
                rejected = ExportTraceServiceResponse.FromString(body).partial_success.rejected_spans
            check_acknowledged(ledger, number, case, json_body, rejected)
        elif status in (400, 413):
            st = json_format.Parse(body, status_pb2.Status()) if json_body else status_pb2.Status.FromString(body)
            expected = code_pb2.INVALID_ARGUMENT if status == 400 else code_pb2.RESOURCE_EXHAUSTED
            if st.code != expected or not st.message:
                ledger.fail(number, case, f"{status} with Status code {st.code}: {st.message!r}")
            else:
                ledger.outcome("invalid" if status == 400 else "too_large")
        else:
            ledger.fail(number, case, f"answered {status}: {body[:300]!r}")

    return send


def check_stored(p: PipelineProcess, ledger: Ledger, before: int) -> None:
    assert_alive_and_healthy(p)
    assert stored(p) - before == ledger.accepted, f"acknowledged {ledger.accepted} spans ({ledger.outcomes})"


def test_mutated_requests_over_grpc_are_answered_ok_invalid_argument_or_resource_exhausted_and_stored(
        grpc_pipeline, tmp_path):
    ledger = Ledger("grpc", tmp_path / "failures")
    before = stored(grpc_pipeline)
    with grpc_export(grpc_pipeline.ports.grpc) as call:
        run_concurrently(grpc_sender(call, ledger), generate("grpc"))
    ledger.check()
    check_stored(grpc_pipeline, ledger, before)


@pytest.mark.parametrize("content_type", [PROTOBUF, JSON])
def test_mutated_requests_over_http_are_answered_200_400_or_413_with_a_status_and_stored(
        http_pipeline, tmp_path, content_type):
    transport = "http-json" if content_type == JSON else "http-protobuf"
    ledger = Ledger(transport, tmp_path / "failures")
    before = stored(http_pipeline)
    run_concurrently(http_sender(http_pipeline.ports.http, ledger, content_type), generate(transport))
    ledger.check()
    check_stored(http_pipeline, ledger, before)


@pytest.mark.parametrize("transport", ["grpc", "http-protobuf", "http-json"])
def test_valid_spans_beside_rejected_ones_in_the_same_request_are_stored(grpc_pipeline, http_pipeline, transport):
    p = grpc_pipeline if transport == "grpc" else http_pipeline
    marker = f"mixed-{transport}-{SEED}"
    rng = random.Random(marker)
    sent_valid = 0
    for i in range(60):
        req, valid, invalid = mixed_request(rng, f"{marker}-{i}")
        if transport == "grpc":
            with grpc_export(p.ports.grpc) as call:
                rejected = call(req.SerializeToString(), timeout=DEADLINE_S).partial_success.rejected_spans
        elif transport == "http-protobuf":
            status, _, body = _post(p.ports.http, req.SerializeToString(), PROTOBUF)
            assert status == 200, body
            rejected = ExportTraceServiceResponse.FromString(body).partial_success.rejected_spans
        else:
            status, _, body = _post(p.ports.http, encode_trace_request(req), JSON)
            assert status == 200, body
            rejected = int(json.loads(body).get("partialSuccess", {}).get("rejectedSpans", 0))
        assert rejected == invalid, f"request {i}: {invalid} invalid spans, {rejected} rejected"
        sent_valid += valid
    assert stored(p, f"name LIKE '{marker}-%-keep-%'") == sent_valid
    assert stored(p, f"name LIKE '{marker}-%-drop-%'") == 0
    assert_alive_and_healthy(p)


# --- property tests over the decoders -------------------------------------------------------------

PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TEXT = st.text(max_size=8)
UINT64 = st.one_of(st.integers(0, 2**64 - 1), st.sampled_from([0, 2**63 - 1, 2**63, 2**64 - 1]))
IDS = st.one_of(st.binary(min_size=16, max_size=16), st.binary(max_size=20))


def _json_double(v: float) -> float | str:
    if math.isnan(v):
        return "NaN"
    return v if math.isfinite(v) else ("Infinity" if v > 0 else "-Infinity")


def _any_values(depth: int) -> st.SearchStrategy[dict]:
    leaves = st.one_of(
        st.just({}), TEXT.map(lambda v: {"stringValue": v}), st.booleans().map(lambda v: {"boolValue": v}),
        st.integers(-(2**63), 2**63 - 1).map(lambda v: {"intValue": str(v)}),
        st.floats().map(lambda v: {"doubleValue": _json_double(v)}),
        st.binary(max_size=6).map(lambda v: {"bytesValue": base64.b64encode(v).decode()}))
    if depth == 0:
        return leaves
    inner = _any_values(depth - 1)
    return st.one_of(
        leaves,
        st.lists(inner, max_size=2).map(lambda vs: {"arrayValue": {"values": vs}}),
        st.lists(st.tuples(TEXT, inner), max_size=2).map(
            lambda kvs: {"kvlistValue": {"values": [{"key": k, "value": v} for k, v in kvs]}}))


ATTRIBUTES = st.lists(st.tuples(st.sampled_from(["k", "gen_ai.request.model", "service.name", ""]) | TEXT,
                                _any_values(3)).map(lambda kv: {"key": kv[0], "value": kv[1]}), max_size=4)
SPANS = st.fixed_dictionaries({
    "traceId": IDS.map(bytes.hex), "spanId": st.one_of(st.binary(min_size=8, max_size=8), st.binary(max_size=10))
    .map(bytes.hex), "parentSpanId": st.binary(max_size=9).map(bytes.hex), "name": TEXT,
    "kind": st.integers(-(2**31), 2**31 - 1), "startTimeUnixNano": UINT64.map(str), "endTimeUnixNano": UINT64.map(str),
    "flags": st.integers(0, 2**32 - 1), "traceState": TEXT, "attributes": ATTRIBUTES,
    "droppedAttributesCount": st.integers(0, 2**32 - 1),
    "events": st.lists(st.fixed_dictionaries({"timeUnixNano": UINT64.map(str), "name": TEXT, "attributes": ATTRIBUTES}),
                       max_size=2),
    "links": st.lists(st.fixed_dictionaries({"traceId": IDS.map(bytes.hex), "spanId": st.binary(max_size=9).map(bytes.hex),
                                             "attributes": ATTRIBUTES, "flags": st.integers(0, 2**32 - 1)}), max_size=2),
    "status": st.fixed_dictionaries({"code": st.integers(-(2**31), 2**31 - 1), "message": TEXT}),
})
REQUESTS = st.fixed_dictionaries({"resourceSpans": st.lists(st.fixed_dictionaries({
    "resource": st.fixed_dictionaries({"attributes": ATTRIBUTES}),
    "scopeSpans": st.lists(st.fixed_dictionaries({
        "scope": st.fixed_dictionaries({"name": TEXT, "version": TEXT, "attributes": ATTRIBUTES}),
        "spans": st.lists(SPANS, max_size=3)}), max_size=2)}), max_size=2)})


def _spans(request: ExportTraceServiceRequest) -> int:
    return sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)


@pytest.mark.parametrize("name", sorted(p.name for p in CORPUS.glob("regression_decoder_*")))
def test_decoder_regression_is_refused_exactly_when_protobufs_own_parser_refuses_it(name):
    answer, problem = in_process_answer(*_checking_ingest(), (CORPUS / name).read_bytes(), name.endswith(".json"))
    assert not problem, f"{name}: {problem}"
    assert answer == "invalid"


@pytest.mark.parametrize("content_type", [PROTOBUF, JSON])
def test_token_and_duration_sums_past_int64_saturate_and_the_store_keeps_committing(start_pipeline, content_type):
    p = start_pipeline()
    suffix = ".json" if content_type == JSON else ".pb"
    body = (CORPUS / f"regression_store_rollup_sums_past_int64{suffix}").read_bytes()
    for _ in range(2):  # the second batch adds to the first one's per-minute rows
        status, _, answer = _post(p.ports.http, body, content_type)
        assert status == 200, answer
        body = _new_span_ids(body, content_type)  # not the same spans again: the store would keep one copy
    assert p.sql("SELECT count(*) FROM spans") == [(12,)]
    assert p.sql("SELECT max(tokens), max(task_duration_ns) FROM agent_minutes") == [(2**63 - 1, 2**63 - 1)]


def _new_span_ids(body: bytes, content_type: str) -> bytes:
    """The same request with new span ids (the store keeps one copy of a span sent again)."""
    req = decode_trace_request(body) if content_type == JSON else ExportTraceServiceRequest.FromString(body)
    for rs in req.resource_spans:
        for ss in rs.scope_spans:
            for span in ss.spans:
                span.span_id = os.urandom(8)
    return encode_trace_request(req) if content_type == JSON else req.SerializeToString()


@functools.cache
def _checking_ingest() -> tuple[Ingest, CheckingConsumer]:
    consumer = CheckingConsumer()
    return Ingest("otlp", consumer, _NoStats(), _quiet_logger()), consumer


@PROPERTY
@given(REQUESTS)
def test_json_decoder_and_converter_raise_nothing_but_decode_errors_on_structurally_valid_requests(document):
    answer, problem = in_process_answer(*_checking_ingest(), json.dumps(document).encode(), json_body=True)
    assert not problem


@PROPERTY
@given(REQUESTS)
def test_protobuf_decoder_raises_nothing_but_decode_errors_and_agrees_with_protobufs_parser(document):
    try:
        request = decode_trace_request(json.dumps(document).encode())
    except OtlpJsonError:
        return  # documented: attributes nested past the limit, say
    answer, problem = in_process_answer(*_checking_ingest(), request.SerializeToString(), json_body=False)
    assert not problem
