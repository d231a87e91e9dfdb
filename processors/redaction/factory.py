"""redaction: secrets and personal data never reach the store or an exporter.

Keys: ``allow_keys`` (when given, other attributes are dropped), ``block_keys`` (the whole value is
redacted), ``ignore_keys`` (no value pattern applies).  Values: the presets' patterns (``secrets``:
API keys, tokens, private keys; ``pii``: emails, phone numbers, Luhn-checked card numbers) and the
config's own, on span, resource, scope and span-event attributes, ``status_message``, and log record
attributes and bodies.  ``genai-content`` replaces message contents by their length (``<key>.length``).
A value becomes ``[REDACTED:<rule>]``, or with ``action: hash`` ``[REDACTED:<rule>:<hmac>]`` so equal
values still join.  A row that lost anything carries ``agent_sre.redacted_count`` (how many, never
what); ``agent_sre_processor_redacted_values{processor, rule}`` counts them.

Put it first in the pipeline (after memory_limiter): what comes after, agent_semconv's canonical
columns included, sees only redacted values.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from agent_sre.pipeline.component import Factory, Kind, Processor
from agent_sre.pipeline.pdata.schema import signal_of
from agent_sre.processors.redaction.config import RedactionConfig
from agent_sre.processors.redaction.redact import Redactor, append_entry
from agent_sre.processors.redaction.rules import COUNT_KEY, LENGTH_SUFFIX

_MAPS = ("attributes", "resource_attributes", "scope_attributes")
_TEXTS = ("status_message", "body")


class RedactionProcessor(Processor):
    config: RedactionConfig

    def __init__(self, settings, config: RedactionConfig):
        super().__init__(settings, config)
        self.redactor = Redactor(config)
        self._redacted = settings.telemetry.processor_redacted
        self._name = str(settings.id)

    def process(self, batch: pa.Table) -> pa.Table:
        if signal_of(batch.schema) not in ("traces", "logs") or not batch.num_rows:
            return batch
        hits: Counter = Counter()
        counts = np.zeros(batch.num_rows, dtype=np.int64)
        columns: dict[str, pa.ChunkedArray] = {}
        for name in _MAPS:
            if name in batch.column_names:
                columns[name], found = _per_chunk(batch.column(name), lambda a: self.redactor.mapping(a, hits))
                counts += found
        if "events" in batch.column_names:
            columns["events"], found = _per_chunk(batch.column("events"), lambda a: self.redactor.events(a, hits))
            counts += found
        length = np.full(batch.num_rows, -1, dtype=np.int64)
        texts = {name: batch.column(name) for name in _TEXTS if name in batch.column_names}
        if self.redactor.drops_content and "event_name" in batch.column_names:
            texts["body"], length = _drop_genai_bodies(batch.column("event_name"), texts["body"])
            counts += length >= 0
            hits["genai_content"] += int((length >= 0).sum())
        for name, column in texts.items():
            columns[name], found = _per_chunk(column, lambda a: self._text(a, hits))
            counts += found
        attributes = columns["attributes"]
        if (length >= 0).any():
            attributes = _with_entry(attributes, "body" + LENGTH_SUFFIX, length)
        columns["attributes"] = _with_entry(attributes, COUNT_KEY, np.where(counts > 0, counts, -1))
        for rule, n in hits.items():
            if n:
                self._redacted.labels(self._name, rule).inc(n)
        for name, column in columns.items():
            batch = batch.set_column(batch.schema.get_field_index(name), name, column)
        return batch

    def _text(self, arr: pa.Array, hits: Counter) -> tuple[pa.Array, np.ndarray]:
        out, changed = self.redactor.strings(arr, None, hits)
        return out, changed.astype(np.int64)


def _per_chunk(column: pa.ChunkedArray, fn) -> tuple[pa.ChunkedArray, np.ndarray]:
    outs, counts = [], []
    for chunk in column.chunks:
        out, found = fn(chunk)
        outs.append(out)
        counts.append(found)
    return pa.chunked_array(outs, column.type), np.concatenate(counts) if counts else np.zeros(0, np.int64)


def _with_entry(column: pa.ChunkedArray, key: str, values: np.ndarray) -> pa.ChunkedArray:
    outs, start = [], 0
    for chunk in column.chunks:
        outs.append(append_entry(chunk, key, values[start:start + len(chunk)]))
        start += len(chunk)
    return pa.chunked_array(outs, column.type)


def _drop_genai_bodies(event_name: pa.ChunkedArray, body: pa.ChunkedArray) -> tuple[pa.ChunkedArray, np.ndarray]:
    """Bodies of GenAI events (``gen_ai.*``: prompts, completions, tool messages) set to null; their lengths."""
    genai = pc.and_(pc.fill_null(pc.starts_with(event_name, "gen_ai."), False), pc.is_valid(body))
    lengths = pc.fill_null(pc.utf8_length(body), -1).to_numpy()
    lengths = np.where(np.asarray(genai.to_numpy(), dtype=bool), lengths, -1)
    return pc.if_else(genai, pa.scalar(None, body.type), body), lengths


factory = Factory(
    type="redaction",
    kind=Kind.PROCESSOR,
    config_model=RedactionConfig,
    create=RedactionProcessor,
    signals=("traces", "logs"),
    description="Masks or hashes secrets and personal data in attributes, events, logs and GenAI message "
                "contents (presets secrets, pii, genai-content); counts what it redacted per span.",
)
