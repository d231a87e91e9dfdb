"""OTLP trace decoding: upb's parse, the pure-Python conversion and the C decoder, in one run.

On the requests of bench/agent_spans.py (512 agent spans, ~12 attributes each), µs of CPU per span
(``time.process_time``; wall time alongside) for:

- upb parse: ``ExportTraceServiceRequest.FromString`` alone (the yardstick, ``upb_parse_us_per_span``);
- Python: ``protobuf_to_table`` with ``AGENT_SRE_PURE_PYTHON_DECODER=1`` (the shadow request and
  column-wise attributes of otlp_attributes.py);
- C: ``protobuf_to_table`` through ``_otlp_decode`` (the whole canonical table), and ``decode`` alone;
- C decode in 2 threads at once: it releases the GIL, so on 2 free cores the wall time per span halves.

Best (min) and median of ``--passes`` passes over ``--count`` requests.

    .venv/bin/python -m bench.decode [--passes 15] [--count 8]
"""

from __future__ import annotations

import argparse
import os
import statistics
from collections.abc import Callable

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from agent_sre.pipeline.pdata.otlp_arrow import PURE_PYTHON_DECODER_ENV, protobuf_to_table
from bench.agent_spans import request_bodies, upb_parse_us_per_span
from bench.timing import in_threads, passes

try:
    from agent_sre.pipeline.pdata import _otlp_decode
except ImportError as exc:
    raise SystemExit("the C decoder is not built: `.venv/bin/pip install -e .` with gcc and Python's headers") from exc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--passes", type=int, default=15)
    ap.add_argument("--count", type=int, default=8, help="requests of 512 spans per pass")
    args = ap.parse_args()
    bodies = request_bodies(seed=1, count=args.count)
    spans = sum(len(ss.spans) for b in bodies for rs in ExportTraceServiceRequest.FromString(b).resource_spans
                for ss in rs.scope_spans)
    assert all(_otlp_decode.decode(b) is not None for b in bodies), "the C decoder fell back"

    def each(convert: Callable[[bytes], object]) -> Callable[[], None]:
        def run() -> None:
            for b in bodies:  # each result dropped at once, as upb_parse_us_per_span does
                convert(b)
        return run

    def pure(body: bytes) -> object:
        os.environ[PURE_PYTHON_DECODER_ENV] = "1"
        try:
            return protobuf_to_table(body)
        finally:
            del os.environ[PURE_PYTHON_DECODER_ENV]

    os.environ.pop(PURE_PYTHON_DECODER_ENV, None)
    each(pure)()  # warm up imports and caches
    each(protobuf_to_table)()
    upb = upb_parse_us_per_span(bodies, repeats=args.passes)
    rows = {
        "upb parse (FromString)": passes(each(ExportTraceServiceRequest.FromString), args.passes, spans),
        "Python protobuf_to_table": passes(each(pure), args.passes, spans),
        "C protobuf_to_table": passes(each(protobuf_to_table), args.passes, spans),
        "C decode() alone": passes(each(_otlp_decode.decode), args.passes, spans),
        "C decode(), 2 threads": passes(in_threads(each(_otlp_decode.decode), 2), args.passes, 2 * spans),
    }
    print(f"{spans} spans per pass ({args.count} requests), {args.passes} passes; µs per span, min / median")
    print(f"upb_parse_us_per_span (wall, best): {upb:.3f}")
    print(f"{'':28} {'CPU min':>8} {'CPU med':>8} {'wall min':>9} {'wall med':>9} {'x upb CPU':>10}")
    upb_cpu = min(rows["upb parse (FromString)"][0])
    for name, (cpu, wall) in rows.items():
        print(f"{name:28} {min(cpu):8.3f} {statistics.median(cpu):8.3f} {min(wall):9.3f} "
              f"{statistics.median(wall):9.3f} {min(cpu) / upb_cpu:10.2f}")
    py, c = min(rows["Python protobuf_to_table"][0]), min(rows["C protobuf_to_table"][0])
    print(f"Python / C protobuf_to_table (CPU): {py / c:.1f}x")


if __name__ == "__main__":
    main()
