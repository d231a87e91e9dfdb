"""A queued exporter prepares what needs no network — the OTLP request body — where the batch is handed to
it (the pipeline's flusher, right after the store wrote the batch), before queueing it; its sender thread
sends that body.  Not with a persistent queue (its sender reads the batch back from disk).  A failure to
prepare loses nothing: the sender encodes again and reports what fails there.  Against a local
OTLP/HTTP sink (tests/otlp_sink.py) that decodes every request."""

from __future__ import annotations

import threading

import pytest

from agent_sre.pipeline.pdata import arrow_otlp
from tests.exporters.helper.test_delivery import exporter, send, start, until
from tests.otlp_sink import Sink


@pytest.fixture
def encodings(monkeypatch):
    """The thread of every request body encoded (``arrow_otlp._encode``), in order; ``fail_first`` makes
    the first one raise."""
    seen: list[str] = []
    real = arrow_otlp._encode
    state = {"fail_first": False}

    def recording(table, form):
        seen.append(threading.current_thread().name)
        if state["fail_first"] and len(seen) == 1:
            raise RuntimeError("a fault in the encoder")
        return real(table, form)

    monkeypatch.setattr(arrow_otlp, "_encode", recording)
    return seen, state


def _deliver(tmp_path, extra: str = "") -> int:
    """Spans sent through a pipeline with one otlphttp exporter, all delivered; the requests the sink got."""
    sink = Sink()
    service = start(tmp_path, {"otlphttp": exporter("otlphttp", sink.url, extra)})
    try:
        sent = send(service, 4, 50)
        until(lambda: len(sink.got.span_ids) >= len(sent), 30, "delivery to the sink")
        assert sorted(sink.got.span_ids) == sorted(sent)  # every span, once
        return len(sink.got.requests)
    finally:
        service.shutdown()
        sink.close()


def test_the_body_is_encoded_once_per_batch_where_it_is_exported_not_on_the_sender(tmp_path, encodings):
    seen, _ = encodings
    requests = _deliver(tmp_path, "    compression: gzip\n")
    assert all("-send-" not in name for name in seen), seen  # the flusher encoded every body
    assert len(seen) == requests  # once per batch: the sender sent what was prepared, encoding nothing again


def test_with_a_persistent_queue_the_sender_encodes_what_it_reads_back(tmp_path, encodings):
    seen, _ = encodings
    queue_dir = tmp_path / "queue"
    _deliver(tmp_path, f"    sending_queue: {{storage: {{directory: {queue_dir}}}}}\n")
    assert seen and all("-send-" in name for name in seen), seen


def test_a_batch_whose_preparation_fails_is_still_delivered(tmp_path, encodings):
    seen, state = encodings
    state["fail_first"] = True
    _deliver(tmp_path)
    assert "-send-" not in seen[0]  # the failed preparation, on the flusher
    assert any("-send-" in name for name in seen[1:]), seen  # its sender encoded that batch again
