"""The columnar redaction of attribute maps, event lists and string columns.

A map column is worked on as its two flat child arrays (every key, every value of the batch) with
the map offsets kept aside: key globs are matched once per distinct key (dictionary-encoded), value
patterns run as Arrow RE2 kernels (``replace_substring_regex``) over the values that the union of all
patterns matched at all, and the map is rebuilt from the same offsets (or from offsets recounted
with numpy when entries are dropped or added).  Per-row counts are differences of a cumulative sum
at the offsets.

Python touches single values in two cases only, both bounded by what is redacted rather than by
the batch: a payment-card candidate needs its Luhn check, and a keyed hash (``action: hash``) needs
HMAC-SHA256, which Arrow has no kernel for; each distinct matching value is worked on once.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from agent_sre.processors.redaction.config import RedactionConfig
from agent_sre.processors.redaction.rules import (
    CONTENT_KEYS,
    COUNT_KEY,
    LENGTH_SUFFIX,
    PII_RULES,
    SECRET_KEYS,
    SECRET_RULES,
    ValueRule,
    glob_regex,
)


class Redactor:
    """The rules of one processor, compiled; safe to call from many threads (no state per call)."""

    def __init__(self, config: RedactionConfig):
        presets = set(config.presets)
        rules: list[ValueRule] = []
        if "secrets" in presets:
            rules += SECRET_RULES
        if "pii" in presets:
            rules += PII_RULES
        rules += [ValueRule(p.name, p.regex) for p in config.patterns]
        self.rules = tuple(rules)
        # One pass over every value finds the few worth each rule's own pass (named groups made anonymous:
        # a name may appear once in a regex).
        self.any_rule = "|".join(f"(?:{r.regex.replace('(?P<keep>', '(?:')})" for r in rules) or None
        block = [*config.block_keys, *(SECRET_KEYS if "secrets" in presets else ())]
        self.block_re = glob_regex(block)
        self.allow_re = glob_regex(config.allow_keys)
        self.ignore_re = glob_regex(config.ignore_keys)
        self.content_re = glob_regex(CONTENT_KEYS) if "genai-content" in presets else None
        self.count_re = glob_regex([COUNT_KEY])
        self.drops_content = "genai-content" in presets
        self.hash_key = config.hash_key.encode() if config.action == "hash" and config.hash_key else None
        self.hash_length = config.hash_length

    # --- what a redacted value becomes -----------------------------------------------------------

    def token(self, name: str, secret: str) -> str:
        if self.hash_key is None:
            return f"[REDACTED:{name}]"
        digest = hmac.new(self.hash_key, secret.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()
        return f"[REDACTED:{name}:{digest[:self.hash_length]}]"

    def _python_sub(self, rule: ValueRule, text: str) -> str:
        # A match that fails its check ("2200 4111 1111 1111 1111": the first sixteen digits fail Luhn)
        # is tried again one character on, so it does not hide the card that follows.
        parts, pos, last = [], 0, 0
        while (m := rule.compiled.search(text, pos)) is not None:
            keep = m.group("keep") if rule.keeps_prefix else ""
            secret = m.group(0)[len(keep):]
            if rule.check is not None and not rule.check(secret):
                pos = m.start() + 1
                continue
            parts += [text[last:m.start()], keep, self.token(rule.name, secret)]
            last = pos = max(m.end(), m.start() + 1)
        return "".join(parts) + text[last:]

    # --- flat string arrays ------------------------------------------------------------------------

    def strings(self, values: pa.Array, scan: np.ndarray | None, hits: Counter,
                distinct: bool = False) -> tuple[pa.Array, np.ndarray]:
        """``values`` with every pattern redacted (only where ``scan``), and which values changed."""
        changed = np.zeros(len(values), dtype=bool)
        if self.any_rule is None or values.null_count == len(values):
            return values, changed
        if not distinct and len(values) >= 64:
            # Resource attributes, model names, status messages: the same few values on many rows, each
            # worked on once.  (Self-metrics then count a value repeated in one batch once.)
            enc = pc.dictionary_encode(values)
            if len(enc.dictionary) * 4 <= len(values):
                done, distinct_changed = self.strings(enc.dictionary, None, hits, distinct=True)
                if not distinct_changed.any():
                    return values, changed
                codes = pc.fill_null(enc.indices, 0)
                changed = distinct_changed[codes.to_numpy()] & _bools(values.is_valid())
                if scan is not None:
                    changed &= scan
                return pc.if_else(pa.array(changed), pc.take(done, codes), values), changed
        cand = _bools(pc.match_substring_regex(values, self.any_rule))
        if scan is not None:
            cand &= scan
        if not cand.any():
            return values, changed
        where = pa.array(cand)
        original = subset = values.filter(where)
        for rule in self.rules:
            subset = self._apply(rule, subset, hits)
        changed[np.flatnonzero(cand)] = _bools(pc.not_equal(subset, original))
        return pc.replace_with_mask(values, where, subset), changed

    def _apply(self, rule: ValueRule, values: pa.Array, hits: Counter) -> pa.Array:
        if rule.check is None and self.hash_key is None:
            rewrite = (r"\1" if rule.keeps_prefix else "") + self.token(rule.name, "")
            after = pc.replace_substring_regex(values, rule.regex, rewrite)
        else:
            hit = _bools(pc.match_substring_regex(values, rule.regex))
            if not hit.any():
                return values
            where = pa.array(hit)
            targets = values.filter(where)
            distinct = pc.unique(targets)
            done = pa.array([self._python_sub(rule, v) for v in distinct.to_pylist()], pa.string())
            after = pc.replace_with_mask(values, where, pc.take(done, pc.index_in(targets, distinct)))
        hits[rule.name] += int(_bools(pc.not_equal(after, values)).sum())
        return after

    def whole(self, values: pa.Array, where: np.ndarray, name: str) -> pa.Array:
        """``values`` with the entries at ``where`` replaced whole by their token."""
        mask = pa.array(where)
        if self.hash_key is None:
            return pc.if_else(mask, pa.scalar(self.token(name, ""), values.type), values)
        targets = values.filter(mask)
        distinct = pc.unique(targets)
        done = pa.array([self.token(name, v) for v in distinct.to_pylist()], values.type)
        return pc.replace_with_mask(values, mask, pc.take(done, pc.index_in(targets, distinct)))

    # --- attribute maps ----------------------------------------------------------------------------

    def mapping(self, arr: pa.MapArray, hits: Counter) -> tuple[pa.MapArray, np.ndarray]:
        """``arr`` redacted, and per row how many values were redacted (plus an earlier count it carried)."""
        rel, keys, values = _flat(arr)
        rows = np.zeros(len(arr), dtype=np.int64)
        if not len(keys):
            return arr, rows
        enc = pc.dictionary_encode(keys)
        codes = enc.indices.to_numpy(zero_copy_only=False)

        def keyed(regex: str | None) -> np.ndarray:
            if regex is None:
                return np.zeros(len(codes), dtype=bool)
            return _bools(pc.match_substring_regex(enc.dictionary, regex))[codes]

        prior = keyed(self.count_re)  # an upstream redaction's count: summed into ours, re-added later
        drop = ~keyed(self.allow_re) & ~prior if self.allow_re else np.zeros(len(codes), dtype=bool)
        content = keyed(self.content_re) & ~drop & ~prior
        blocked = keyed(self.block_re) & ~drop & ~content & ~prior & _bools(values.is_valid())
        scan = ~(drop | content | blocked | prior | keyed(self.ignore_re))
        if content.any():
            where = pa.array(content)
            keys = pc.if_else(where, pc.binary_join_element_wise(keys, LENGTH_SUFFIX, ""), keys)
            values = pc.if_else(where, pc.cast(pc.utf8_length(values), pa.string()), values)
            hits["genai_content"] += int(content.sum())
        if blocked.any():
            values = self.whole(values, blocked, "key")
            hits["key"] += int(blocked.sum())
        values, changed = self.strings(values, scan, hits)
        hits["allow_keys"] += int(drop.sum())
        redacted = drop | content | blocked | changed
        if not redacted.any() and not prior.any():
            return arr, rows
        rows = _per_row(redacted, rel)
        if prior.any():
            rows += _per_row_sum(_ints(values, prior), rel)
        keep = ~(drop | prior)
        if not keep.all():
            where = pa.array(keep)
            keys, values = keys.filter(where), values.filter(where)
            rel = np.concatenate(([0], np.cumsum(keep, dtype=np.int64)))[rel]
        return _map(arr, rel, keys, values), rows

    def events(self, arr: pa.ListArray, hits: Counter) -> tuple[pa.ListArray, np.ndarray]:
        """Span events with their attributes redacted, and per span how many values were."""
        rel = _rel_offsets(arr)
        if not rel[-1]:
            return arr, np.zeros(len(arr), dtype=np.int64)
        structs = arr.values.slice(int(arr.offsets[0].as_py()), int(rel[-1]))
        children = structs.flatten()
        at = structs.type.get_field_index("attributes")
        attributes, per_event = self.mapping(children[at], hits)
        if attributes is children[at]:
            return arr, np.zeros(len(arr), dtype=np.int64)
        children[at] = attributes
        rebuilt = pa.StructArray.from_arrays(children, fields=list(structs.type),
                                             mask=_null_mask(structs))
        out = pa.ListArray.from_arrays(pa.array(rel, pa.int32()), rebuilt, type=arr.type, mask=_null_mask(arr))
        return out, _per_row_sum(per_event, rel)


# --- adding entries to maps ------------------------------------------------------------------------


def append_entry(arr: pa.MapArray, key: str, values: np.ndarray) -> pa.MapArray:
    """``arr`` with ``key: str(values[i])`` added at the end of every row where ``values[i] >= 0``
    (a null row becomes a map of that one entry)."""
    add = values >= 0
    if not add.any():
        return arr
    rel, keys, items = _flat(arr)
    n, extra = len(keys), np.concatenate(([0], np.cumsum(add, dtype=np.int64)))
    new_rel = rel + extra
    rows = np.repeat(np.arange(len(arr)), np.diff(rel))
    order = np.empty(n + int(add.sum()), dtype=np.int64)
    order[np.arange(n) + extra[rows]] = np.arange(n)
    order[new_rel[1:][add] - 1] = n + np.arange(int(add.sum()))
    take = pa.array(order)
    added_keys = pa.array([key] * int(add.sum()), keys.type)
    added_items = pc.cast(pa.array(values[add]), items.type)
    keys = pc.take(pa.concat_arrays([keys, added_keys]), take)
    items = pc.take(pa.concat_arrays([items, added_items]), take)
    nulls = _null_mask(arr)
    mask = pc.and_(nulls, pa.array(~add)) if nulls is not None else None
    return pa.MapArray.from_arrays(pa.array(new_rel, pa.int32()), keys, items, type=arr.type, mask=mask)


# --- helpers ------------------------------------------------------------------------------------


def _bools(arr: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return np.asarray(pc.fill_null(arr, False).to_numpy(zero_copy_only=False), dtype=bool)


def _rel_offsets(arr: pa.ListArray | pa.MapArray) -> np.ndarray:
    offsets = arr.offsets.to_numpy().astype(np.int64)  # a slice's offsets start where it starts
    return offsets - offsets[0]


def _flat(arr: pa.MapArray) -> tuple[np.ndarray, pa.Array, pa.Array]:
    rel = _rel_offsets(arr)
    base = int(arr.offsets[0].as_py())
    return rel, arr.keys.slice(base, int(rel[-1])), arr.items.slice(base, int(rel[-1]))


def _map(like: pa.MapArray, rel: np.ndarray, keys: pa.Array, values: pa.Array) -> pa.MapArray:
    return pa.MapArray.from_arrays(pa.array(rel, pa.int32()), keys, values, type=like.type, mask=_null_mask(like))


def _null_mask(arr: pa.Array) -> pa.Array | None:
    return arr.is_null() if arr.null_count else None


def _per_row(flags: np.ndarray, rel: np.ndarray) -> np.ndarray:
    return _per_row_sum(flags.astype(np.int64), rel)


def _per_row_sum(numbers: np.ndarray, rel: np.ndarray) -> np.ndarray:
    cs = np.concatenate(([0], np.cumsum(numbers, dtype=np.int64)))
    return cs[rel[1:]] - cs[rel[:-1]]


def _ints(values: pa.Array, where: np.ndarray) -> np.ndarray:
    """The integers at ``where`` (0 elsewhere, and where the text is not an integer)."""
    out = np.zeros(len(values), dtype=np.int64)
    texts = values.filter(pa.array(where))
    try:
        parsed = pc.fill_null(pc.cast(texts, pa.int64()), 0).to_numpy()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        parsed = np.array([int(t) if t and t.strip().isdigit() else 0 for t in texts.to_pylist()], dtype=np.int64)
    out[np.flatnonzero(where)] = parsed
    return out

