"""Mutation fuzzing of OTLP trace requests: the seed corpus and the mutators.

Protobuf bodies are mutated structurally: a seed is parsed into its wire-format
fields (guided by the OTLP descriptors, so sub-messages are fields too), one to
three operators change fields anywhere in the tree, and the tree is encoded
again with the enclosing lengths recomputed, so a mutation deep inside a span
reaches the span decoder instead of being caught at the first length prefix.
Some cases then get a byte-level operator on top (truncation, bit flips).

    protobuf: wrong wire type, huge length prefix (up to 2^64-1), extreme varint
              or fixed64 value, duplicated / deleted field, unknown field,
              corrupted string or id bytes, AnyValue nested up to 100,000 deep,
              nested groups; then maybe truncation, bit flips, byte inserts
    JSON:     wrong type per field, huge numbers, NaN/Infinity literals, hex ids
              of the wrong length or not hex, deep nesting (AnyValue and bare
              brackets), a field given twice, enum names; then maybe
              truncation, invalid UTF-8, lone surrogates, byte flips

test_fuzz.py makes every case from ``random.Random(f"{seed}:{transport}:{case}")``, so one
case is reproduced from those alone (``mutate_protobuf``/``mutate_json``).

The corpus (``fuzz_corpus/``) is written by ``python -m tests.receivers.otlp.fuzz_helpers``
from the real OpenTelemetry SDK's encoder and from hand-built requests; the
``regression_*`` files in it are cases that once broke a decoder or the store.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import random
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from agent_sre.pipeline.pdata.otlp_json import encode_trace_request
from tests.otlp_builders import kv

CORPUS = Path(__file__).parent / "fuzz_corpus"

VARINT, I64, LEN, SGROUP, EGROUP, I32 = 0, 1, 2, 3, 4, 5
_REQUEST = ExportTraceServiceRequest.DESCRIPTOR
_U64 = (1 << 64) - 1
HUGE_LENGTHS = (_U64, 1 << 63, (1 << 63) - 1, 1 << 32, (1 << 32) - 1, 1 << 31, (1 << 31) - 1, 1 << 28)
EXTREME_INTS = (0, 1, -1, (1 << 31) - 1, 1 << 31, (1 << 32) - 1, 1 << 32, (1 << 63) - 1, 1 << 63, _U64,
                -(1 << 63))
NEST_DEPTHS = (2, 10, 30, 31, 32, 33, 47, 48, 49, 50, 99, 100, 101, 1_000, 10_000, 100_000)
ID_LENGTHS = (0, 1, 7, 9, 15, 17, 32, 300)


def load_corpus(suffix: str, seeds_only: bool = False) -> list[bytes]:
    """The corpus files ending in ``suffix`` (.pb, .json), in name order; ``seeds_only``: without the
    ``regression_*`` cases (some are not valid protobuf, so they cannot be parsed into a tree)."""
    return [p.read_bytes() for p in sorted(CORPUS.glob(f"*{suffix}"))
            if not (seeds_only and p.name.startswith("regression_"))]


# --- the protobuf wire format -------------------------------------------------
#
# A tree is a tuple of fields and is never changed: an operator builds a new tree that
# shares every untouched subtree (and its encoding) with the seed, so a case costs about
# the depth of the change, not the size of the seed.


def varint(n: int) -> bytes:
    n &= _U64  # a negative int64 is its 10-byte two's complement, as protobuf writes it
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def tag(number: int, wire: int) -> bytes:
    return varint(number << 3 | wire)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7


@dataclass(frozen=True)
class Field:
    """One field on the wire and its encoding; ``value`` is an int (varint), bytes (fixed or LEN)
    or a parsed sub-message.  A field a mutation broke on purpose is ``raw``: only its bytes count."""

    number: int
    wire: int
    value: int | bytes | tuple[Field, ...]
    desc: FieldDescriptor | None
    encoded: bytes

    @property
    def is_message(self) -> bool:
        return isinstance(self.value, tuple)


def make_field(number: int, wire: int, value: int | bytes | tuple[Field, ...],
               desc: FieldDescriptor | None = None) -> Field:
    if wire == VARINT:
        assert isinstance(value, int)
        payload = varint(value)
    else:
        payload = encode(value) if isinstance(value, tuple) else value  # type: ignore[assignment]
        assert isinstance(payload, bytes)
        if wire == LEN:
            payload = varint(len(payload)) + payload
    return Field(number, wire, value, desc, tag(number, wire) + payload)


def raw(data: bytes) -> Field:
    return Field(0, -1, b"", None, data)


def encode(fields: tuple[Field, ...]) -> bytes:
    return b"".join(f.encoded for f in fields)


def parse(data: bytes, message: Descriptor | None = _REQUEST) -> tuple[Field, ...]:
    """A valid encoded message as its fields; sub-messages the descriptor knows are parsed too."""
    fields: list[Field] = []
    pos = 0
    while pos < len(data):
        start = pos
        key, pos = _read_varint(data, pos)
        number, wire = key >> 3, key & 7
        desc = message.fields_by_number.get(number) if message is not None else None
        value: int | bytes | tuple[Field, ...]
        if wire == VARINT:
            value, pos = _read_varint(data, pos)
        elif wire in (I64, I32):
            size = 8 if wire == I64 else 4
            value, pos = data[pos:pos + size], pos + size
        elif wire == LEN:
            size, pos = _read_varint(data, pos)
            value, pos = data[pos:pos + size], pos + size
            if desc is not None and desc.type == FieldDescriptor.TYPE_MESSAGE:
                value = parse(value, desc.message_type)
        else:
            raise ValueError(f"seed uses wire type {wire}")
        fields.append(Field(number, wire, value, desc, data[start:pos]))
    return tuple(fields)


@dataclass(frozen=True)
class Site:
    """A field and where it sits: the indices from the root, and the message type holding it."""

    path: tuple[int, ...]
    node: Field
    message: Descriptor


class Tree:
    """A request's fields.  Operators choose among the fields of the seed a tree derives from
    (listed once per seed) and look each choice up again by its path: an earlier operator may
    have moved or removed it, and then the operator does nothing."""

    def __init__(self, fields: tuple[Field, ...], origin: Tree | None = None):
        self.fields = fields
        self.origin = origin or self
        self._sites: list[Site] | None = None
        self._candidates: dict[Callable[[Field], bool], list[Site]] = {}
        self.messages: list[tuple[tuple[int, ...], Descriptor]] | None = None

    @property
    def sites(self) -> list[Site]:
        if self._sites is None:
            self._sites = []
            self._collect(self.fields, (), _REQUEST)
        return self._sites

    def _collect(self, fields: tuple[Field, ...], path: tuple[int, ...], message: Descriptor) -> None:
        assert self._sites is not None
        for i, f in enumerate(fields):
            self._sites.append(Site((*path, i), f, message))
            if f.is_message and f.desc is not None:
                self._collect(f.value, (*path, i), f.desc.message_type)  # type: ignore[arg-type]

    def pick(self, rng: random.Random, want: Callable[[Field], bool]) -> Site | None:
        origin = self.origin
        candidates = origin._candidates.get(want)
        if candidates is None:
            candidates = origin._candidates[want] = [s for s in origin.sites if want(s.node)]
        if not candidates:
            return None
        site = self.resolve(rng.choice(candidates).path)
        return site if site is not None and want(site.node) else None

    def resolve(self, path: tuple[int, ...]) -> Site | None:
        """The field at ``path`` in this tree, if there is one."""
        fields, message = self.fields, _REQUEST
        for depth, i in enumerate(path):
            if i >= len(fields):
                return None
            node = fields[i]
            if depth == len(path) - 1:
                return Site(path, node, message)
            if not node.is_message or node.desc is None:
                return None
            fields, message = node.value, node.desc.message_type  # type: ignore[assignment]
        return None

    def replace(self, path: tuple[int, ...], nodes: tuple[Field, ...]) -> Tree:
        """A new tree with the field at ``path`` replaced by ``nodes`` (none: deleted; the field
        itself among them: something inserted next to it)."""
        return Tree(_replace(self.fields, path, nodes), self.origin)

    def insert_into(self, path: tuple[int, ...], message: Descriptor, node: Field, rng: random.Random) -> Tree:
        """A new tree with ``node`` at a random place among the fields of the ``message`` at ``path``."""
        if path:
            site = self.resolve(path)
            if site is None or not site.node.is_message or site.node.desc is None \
                    or site.node.desc.message_type is not message:
                return self
        return Tree(_insert(self.fields, path, node, rng), self.origin)


def _replace(fields: tuple[Field, ...], path: tuple[int, ...], nodes: tuple[Field, ...]) -> tuple[Field, ...]:
    i = path[0]
    if len(path) > 1:
        parent = fields[i]
        nodes = (make_field(parent.number, parent.wire, _replace(parent.value, path[1:], nodes),  # type: ignore
                            parent.desc),)
    return fields[:i] + nodes + fields[i + 1:]


def _insert(fields: tuple[Field, ...], path: tuple[int, ...], node: Field, rng: random.Random) -> tuple[Field, ...]:
    if not path:
        at = rng.randrange(len(fields) + 1)
        return fields[:at] + (node,) + fields[at:]
    parent = fields[path[0]]
    inner = _insert(parent.value, path[1:], node, rng)  # type: ignore[arg-type]
    return fields[:path[0]] + (make_field(parent.number, parent.wire, inner, parent.desc),) + fields[path[0] + 1:]


def _messages(tree: Tree) -> list[tuple[tuple[int, ...], Descriptor]]:
    """Every (sub-)message of the seed, by path, with its type: where new fields can go."""
    origin = tree.origin
    if origin.messages is None:
        origin.messages = [((), _REQUEST)] + [(s.path, s.node.desc.message_type) for s in origin.sites  # type: ignore
                                              if s.node.is_message and s.node.desc is not None]
    return origin.messages


# --- values built by hand on the wire -------------------------------------------------


@functools.lru_cache(maxsize=64)
def nested_any_value(depth: int, shape: int) -> bytes:
    """An AnyValue nested ``depth`` arrays/kvlists deep (mixed as ``shape`` seeds), around a string.

    Built in O(depth): each level is a prefix only (tag, length, and for kvlists the key), so
    the lengths are computed inside out and the prefixes joined outside in."""
    rng = random.Random(shape)
    inner = AnyValue(string_value="deep").SerializeToString()
    size = len(inner)
    prefixes: list[bytes] = []
    for _ in range(depth):
        if rng.random() < 0.5:  # array_value(5) { values(1): AnyValue }
            values = tag(1, LEN) + varint(size)
            prefixes.append(tag(5, LEN) + varint(len(values) + size) + values)
        else:  # kvlist_value(6) { values(1): KeyValue { key(1): "k", value(2): AnyValue } }
            key_value = tag(1, LEN) + b"\x01k" + tag(2, LEN) + varint(size)
            values = tag(1, LEN) + varint(len(key_value) + size) + key_value
            prefixes.append(tag(6, LEN) + varint(len(values) + len(key_value) + size) + values)
        size += len(prefixes[-1])
    return b"".join(reversed(prefixes)) + inner


def key_value_field(number: int, key: bytes, any_value: bytes) -> Field:
    body = tag(1, LEN) + varint(len(key)) + key + tag(2, LEN) + varint(len(any_value)) + any_value
    return raw(tag(number, LEN) + varint(len(body)) + body)


def nested_groups(depth: int, number: int, closed: bool) -> bytes:
    return tag(number, SGROUP) * depth + (tag(number, EGROUP) * depth if closed else b"")


# --- protobuf operators -----------------------------------------------------------------

ProtobufOperator = Callable[[random.Random, Tree], Tree]


def _any_field(f: Field) -> bool:
    return True


def _is_len(f: Field) -> bool:
    return f.wire == LEN


def _is_numeric_field(f: Field) -> bool:
    return f.wire in (VARINT, I64, I32)


def _is_string_or_bytes(f: Field) -> bool:
    return f.wire == LEN and isinstance(f.value, bytes)


def _pick(rng: random.Random, tree: Tree, want: Callable[[Field], bool] = _any_field) -> Site | None:
    return tree.pick(rng, want)


def _random_payload(rng: random.Random, wire: int, old: Field) -> bytes:
    if wire == VARINT:
        return varint(rng.choice(EXTREME_INTS) if rng.random() < 0.5 else rng.getrandbits(64))
    if wire == I64:
        return rng.randbytes(8)
    if wire == I32:
        return rng.randbytes(4)
    if wire == LEN:
        payload = old.encoded if rng.random() < 0.5 else rng.randbytes(rng.randrange(16))
        return varint(len(payload)) + payload
    if wire == SGROUP:  # a group, closed or not, around the old field's bytes
        return old.encoded + (tag(old.number, EGROUP) if rng.random() < 0.5 else b"")
    return rng.randbytes(rng.randrange(4))  # EGROUP alone, or the invalid wire types 6 and 7


def _is_field(f: Field) -> bool:
    return f.wire >= 0


def op_wrong_wire_type(rng: random.Random, tree: Tree) -> Tree:
    site = _pick(rng, tree, _is_field)
    if site is None:
        return tree
    old = site.node
    wire = rng.choice([w for w in range(8) if w != old.wire])
    return tree.replace(site.path, (raw(tag(old.number, wire) + _random_payload(rng, wire, old)),))


def op_huge_length(rng: random.Random, tree: Tree) -> Tree:
    site = _pick(rng, tree, _is_len)
    if site is None:
        return tree
    old = site.node
    payload = old.encoded[len(tag(old.number, LEN)):]
    _, start = _read_varint(payload, 0)
    body = payload[start:]
    length = rng.choice([*HUGE_LENGTHS, len(body) + 1, len(body) + 4096])
    prefix = b"\xff" * 10 + b"\x01" if rng.random() < 0.1 else varint(length)  # 11 bytes: no varint at all
    return tree.replace(site.path, (raw(tag(old.number, LEN) + prefix + body),))


def op_extreme_number(rng: random.Random, tree: Tree) -> Tree:
    site = _pick(rng, tree, _is_numeric_field)
    if site is None:
        return tree
    f = site.node
    value: int | bytes
    if f.wire == VARINT:
        value = rng.choice(EXTREME_INTS)
    elif f.wire == I64:
        value = rng.choice([b"\xff" * 8, b"\x00" * 8, struct.pack("<Q", 1 << 63), struct.pack("<d", math.nan),
                            struct.pack("<d", -math.inf), struct.pack("<Q", (1 << 63) - 1)])
    else:
        value = rng.choice([b"\xff" * 4, b"\x00" * 4, struct.pack("<f", math.nan)])
    return tree.replace(site.path, (make_field(f.number, f.wire, value, f.desc),))


def op_duplicate(rng: random.Random, tree: Tree) -> Tree:
    site = _pick(rng, tree)
    if site is None:
        return tree
    return tree.replace(site.path, (site.node,) * rng.choice((2, 2, 3, 50)))


def op_delete(rng: random.Random, tree: Tree) -> Tree:
    site = _pick(rng, tree)
    return tree if site is None else tree.replace(site.path, ())


def op_unknown_field(rng: random.Random, tree: Tree) -> Tree:
    path, message = rng.choice(_messages(tree))
    number = rng.choice([n for n in (15, 16, 99, 2047, 536_870_911) if n not in message.fields_by_number])
    wire = rng.choice((VARINT, I64, LEN, I32, SGROUP))
    old = make_field(number, VARINT, 0)
    return tree.insert_into(path, message, raw(tag(number, wire) + _random_payload(rng, wire, old)), rng)


_INVALID_UTF8 = (b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xc0\xaf", b"\xf4\x90\x80\x80", b"\xe2\x82")


def op_corrupt_bytes(rng: random.Random, tree: Tree) -> Tree:
    """A string, bytes or id field's content: invalid UTF-8, flipped bytes, ids of the wrong length or zero."""
    site = _pick(rng, tree, _is_string_or_bytes)
    if site is None:
        return tree
    f = site.node
    assert isinstance(f.value, bytes)
    data = bytearray(f.value)
    choice = rng.randrange(4)
    if choice == 0:
        at = rng.randrange(len(data) + 1)
        data[at:at] = rng.choice(_INVALID_UTF8)
    elif choice == 1 and data:
        for _ in range(rng.randrange(1, 4)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    elif choice == 2:
        data = bytearray(rng.randbytes(rng.choice(ID_LENGTHS)))
    else:
        data = bytearray(len(data))  # all zero: an all-zero trace or span id
    return tree.replace(site.path, (make_field(f.number, LEN, bytes(data), f.desc),))


def op_deep_nesting(rng: random.Random, tree: Tree) -> Tree:
    """An attribute whose value is nested arrays/kvlists, or nested groups, in any message."""
    depth = rng.choice(NEST_DEPTHS)
    messages = _messages(tree)
    holders = [(p, m) for p, m in messages if "attributes" in m.fields_by_name]
    if holders and rng.random() < 0.8:
        path, message = rng.choice(holders)
        number = message.fields_by_name["attributes"].number
        node = key_value_field(number, b"deep", nested_any_value(depth, rng.randrange(3)))
    else:
        path, message = rng.choice(messages)
        node = raw(nested_groups(depth, rng.choice((5, 99)), closed=rng.random() < 0.5))
    return tree.insert_into(path, message, node, rng)


PROTOBUF_OPERATORS: dict[str, ProtobufOperator] = {
    "wrong_wire_type": op_wrong_wire_type,
    "huge_length": op_huge_length,
    "extreme_number": op_extreme_number,
    "duplicate": op_duplicate,
    "delete": op_delete,
    "unknown_field": op_unknown_field,
    "corrupt_bytes": op_corrupt_bytes,
    "deep_nesting": op_deep_nesting,
}


def mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    """Byte-level damage to an encoded body."""
    out = bytearray(data)
    choice = rng.randrange(4)
    if choice == 0 and out:
        del out[rng.randrange(len(out)):]  # truncation
    elif choice == 1 and out:
        for _ in range(rng.randrange(1, 9)):
            out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    elif choice == 2 and out:
        for _ in range(rng.randrange(1, 5)):
            out[rng.randrange(len(out))] = rng.choice((0x00, 0x7F, 0x80, 0xFF))
    else:
        at = rng.randrange(len(out) + 1)
        out[at:at] = rng.randbytes(rng.randrange(1, 16))
    return bytes(out)


@dataclass
class Case:
    body: bytes
    operators: list[str] = field(default_factory=list)


@functools.lru_cache(maxsize=32)
def _seed_tree(seed: bytes) -> Tree:
    return Tree(parse(seed))


def mutate_protobuf(rng: random.Random, seeds: list[bytes]) -> Case:
    seed = _seed_tree(rng.choice(seeds))
    tree = seed
    names = rng.choices(list(PROTOBUF_OPERATORS), k=rng.randrange(1, 4))
    for name in names:
        tree = PROTOBUF_OPERATORS[name](rng, tree)
    for _ in range(5):  # an operator finds nothing to change now and then: never send the seed as it is
        if tree.fields != seed.fields:
            break
        names.append(rng.choice(list(PROTOBUF_OPERATORS)))
        tree = PROTOBUF_OPERATORS[names[-1]](rng, tree)
    body = encode(tree.fields)
    if rng.random() < 0.3:
        names.append("bytes")
        body = mutate_bytes(rng, body)
    return Case(body, names)


# --- JSON operators ----------------------------------------------------------------------

_HEX_KEYS = ("traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id")
_HUGE_NUMBERS = (1e308, -1e308, 2**64, 2**64 - 1, -(2**63) - 1, 10**30, 1.5, -1, 0.0, "1e99999", "18446744073709551616",
                 "-0", "0x10", " 1", "9" * 5000)
_WRONG_VALUES: tuple[object, ...] = (None, True, False, 0, -1, 1.5, "", "x", [], {}, [None], {"a": 1}, "NaN",
                                     "Infinity")


@dataclass
class _Slot:
    parent: dict | list
    key: str | int

    def get(self) -> object:
        """The value, or None where an earlier operator removed it."""
        try:
            return self.parent[self.key]  # type: ignore[index]
        except (KeyError, IndexError):
            return None

    def set(self, value: object) -> None:
        """Sets the value; nothing where an earlier operator removed the list item."""
        if isinstance(self.parent, dict) or self.key < len(self.parent):  # type: ignore[operator]
            self.parent[self.key] = value  # type: ignore[index]


class _Nested(str):
    """A placeholder for JSON nested too deep for ``json.dumps``; ``_Document.dump`` splices its text in."""

    text: bytes


@dataclass
class _Document:
    """A parsed JSON body under mutation.  ``slots`` are listed once, before the first operator:
    a later operator may pick a slot an earlier one cut off, which changes nothing."""

    root: dict
    slots: list[_Slot] = field(default_factory=list)
    nested: list[_Nested] = field(default_factory=list)

    def __post_init__(self) -> None:
        stack: list[object] = [self.root]
        while stack:
            node = stack.pop()
            if isinstance(node, dict):
                for key, value in node.items():
                    self.slots.append(_Slot(node, key))
                    stack.append(value)
            elif isinstance(node, list):
                for key, value in enumerate(node):
                    self.slots.append(_Slot(node, key))
                    stack.append(value)

    def pick(self, rng: random.Random, want: Callable[[_Slot], bool] = lambda s: True) -> _Slot | None:
        candidates = [s for s in self.slots if want(s)]
        return rng.choice(candidates) if candidates else None

    def nest(self, depth: int, shape: int, any_value: bool) -> _Nested:
        placeholder = _Nested(f"\\u0000nested-{len(self.nested)}")
        placeholder.text = nested_json(depth, shape, any_value)
        self.nested.append(placeholder)
        return placeholder

    def dump(self) -> bytes:
        text = json.dumps(self.root, separators=(",", ":"), ensure_ascii=False, allow_nan=True)
        body = text.encode("utf-8", "surrogatepass")
        for placeholder in self.nested:
            body = body.replace(json.dumps(str(placeholder)).encode(), placeholder.text, 1)
        return body


_LAYERS = {  # (prefix, suffix) of one level
    "array_value": (b'{"arrayValue":{"values":[', b"]}}"),
    "kvlist_value": (b'{"kvlistValue":{"values":[{"key":"k","value":', b"}]}}"),
    "list": (b"[", b"]"),
    "object": (b'{"a":', b"}"),
}


@functools.lru_cache(maxsize=64)
def nested_json(depth: int, shape: int, any_value: bool) -> bytes:
    """``depth`` levels of AnyValue arrays/kvlists (or of bare lists/objects) around a string, in O(depth)."""
    rng = random.Random(shape)
    kinds = ("array_value", "kvlist_value") if any_value else ("list", "object")
    layers = [_LAYERS[rng.choice(kinds)] for _ in range(depth)]
    inner = b'{"stringValue":"deep"}' if any_value else b'"deep"'
    return b"".join(p for p, _ in layers) + inner + b"".join(s for _, s in reversed(layers))


def _is_json_number(slot: _Slot) -> bool:
    value = slot.get()
    return isinstance(value, (int, float, str)) and not isinstance(value, bool)


def jop_wrong_type(rng: random.Random, doc: _Document) -> None:
    slot = doc.pick(rng)
    if slot is not None:
        slot.set(copy.deepcopy(rng.choice(_WRONG_VALUES)))


def jop_huge_number(rng: random.Random, doc: _Document) -> None:
    slot = doc.pick(rng, _is_json_number)
    if slot is not None:
        slot.set(rng.choice(_HUGE_NUMBERS))


class _Literal(float):
    """A float json.dumps writes as NaN / Infinity / -Infinity (allow_nan), not as a string."""


def jop_nan(rng: random.Random, doc: _Document) -> None:
    slot = doc.pick(rng)
    if slot is not None:
        slot.set(_Literal(rng.choice((math.nan, math.inf, -math.inf))))


def jop_hex_id(rng: random.Random, doc: _Document) -> None:
    slot = doc.pick(rng, lambda s: s.key in _HEX_KEYS)
    if slot is None:
        return
    choice = rng.randrange(4)
    if choice == 0:
        slot.set(rng.randbytes(rng.choice(ID_LENGTHS)).hex())  # wrong length: rejected span
    elif choice == 1:
        slot.set(rng.choice(("abc", "zz" * 8, "0x" + "1" * 30, " " + "a" * 32, "٣" * 32, "g" * 16)))  # not hex
    elif choice == 2:
        slot.set("0" * len(str(slot.get())))
    else:
        slot.set(str(slot.get()).upper())


def jop_deep_nesting(rng: random.Random, doc: _Document) -> None:
    depth = rng.choice(NEST_DEPTHS)
    holder = doc.pick(rng, lambda s: s.key == "attributes" and isinstance(s.get(), list))
    if holder is not None and rng.random() < 0.7:
        holder.get().append({"key": "deep", "value": doc.nest(depth, rng.randrange(3), True)})  # type: ignore
        return
    slot = doc.pick(rng)  # bare lists and objects
    if slot is not None:
        slot.set(doc.nest(depth, rng.randrange(3), False))


def jop_delete(rng: random.Random, doc: _Document) -> None:
    slot = doc.pick(rng)
    if slot is None:
        return
    if isinstance(slot.parent, dict):
        slot.parent.pop(slot.key, None)  # type: ignore[arg-type]
    elif slot.key < len(slot.parent):  # type: ignore[operator]
        del slot.parent[slot.key]  # type: ignore[arg-type]


def jop_duplicate(rng: random.Random, doc: _Document) -> None:
    """A field given as lowerCamelCase and as its proto name, or a list item twice."""
    slot = doc.pick(rng, lambda s: isinstance(s.key, str) and not s.key.islower())
    if slot is not None and rng.random() < 0.5:
        snake = "".join("_" + c.lower() if c.isupper() else c for c in str(slot.key))
        slot.parent[snake] = copy.deepcopy(slot.get())  # type: ignore[call-overload]
        return
    slot = doc.pick(rng, lambda s: isinstance(s.parent, list))
    if slot is not None and slot.parent:
        slot.parent.append(copy.deepcopy(rng.choice(slot.parent)))  # type: ignore[arg-type]


def jop_enum(rng: random.Random, doc: _Document) -> None:
    slot = doc.pick(rng, lambda s: s.key in ("kind", "code"))
    if slot is not None:
        slot.set(rng.choice(("SPAN_KIND_CLIENT", "STATUS_CODE_ERROR", "NOPE", 2**31, -(2**31) - 1, 99, "3", 2.0,
                             2.5)))


JSON_OPERATORS: dict[str, Callable[[random.Random, _Document], None]] = {
    "wrong_type": jop_wrong_type,
    "huge_number": jop_huge_number,
    "nan": jop_nan,
    "hex_id": jop_hex_id,
    "deep_nesting": jop_deep_nesting,
    "delete": jop_delete,
    "duplicate": jop_duplicate,
    "enum": jop_enum,
}


def _dump(doc: object) -> bytes:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False, allow_nan=True).encode()


def mutate_json_text(rng: random.Random, body: bytes) -> bytes:
    """Text-level damage: truncation, invalid UTF-8, lone surrogate escapes, flipped bytes, bare nesting."""
    out = bytearray(body)
    choice = rng.randrange(5)
    at = rng.randrange(len(out) + 1)
    in_string = out.find(b'"', at) + 1 or at  # just after a quote: inside a string, mostly
    if choice == 0:
        del out[at:]
    elif choice == 1:
        out[in_string:in_string] = rng.choice(_INVALID_UTF8)
    elif choice == 2:
        out[in_string:in_string] = rng.choice((b"\\ud800", b"\\udfff", b"\\u0000", b"\\x", b"\\"))
    elif choice == 3 and out:
        for _ in range(rng.randrange(1, 5)):
            out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    else:
        out[at:at] = b"[" * rng.choice((1_000, 100_000))
    return bytes(out)


def mutate_json(rng: random.Random, seeds: list[bytes]) -> Case:
    doc = _Document(json.loads(rng.choice(seeds)))
    names = rng.choices(list(JSON_OPERATORS), k=rng.randrange(1, 4))
    for name in names:
        JSON_OPERATORS[name](rng, doc)
    body = doc.dump()
    if rng.random() < 0.3:
        names.append("text")
        body = mutate_json_text(rng, body)
    return Case(body, names)


# --- requests with valid and invalid spans side by side ----------------------------------


def mixed_request(rng: random.Random, marker: str) -> tuple[ExportTraceServiceRequest, int, int]:
    """A request whose spans are named ``{marker}-keep-*`` (valid) or ``{marker}-drop-*`` (each with
    one defect the receiver rejects by ``partial_success``), valid and invalid in separate resources
    or scopes or interleaved; returns (request, valid spans, invalid spans)."""
    req = ExportTraceServiceRequest()
    valid = invalid = 0
    for r in range(rng.randrange(1, 4)):
        rs = req.resource_spans.add()
        rs.resource.attributes.add(key="service.name", value=AnyValue(string_value=f"svc-{r}"))
        for s in range(rng.randrange(1, 3)):
            ss = rs.scope_spans.add()
            ss.scope.name = f"scope-{s}"
            bad_share = rng.choice((0.0, 0.5, 1.0))
            for _ in range(rng.randrange(1, 6)):
                span = ss.spans.add()
                _fill_span(rng, span)
                if rng.random() < bad_share:
                    span.name = f"{marker}-drop-{invalid}"
                    _break_span(rng, span)
                    invalid += 1
                else:
                    span.name = f"{marker}-keep-{valid}"
                    valid += 1
    return req, valid, invalid


def _fill_span(rng: random.Random, span: Span) -> None:
    span.trace_id = rng.randbytes(15) + b"\x01"
    span.span_id = rng.randbytes(7) + b"\x01"
    if rng.random() < 0.5:
        span.parent_span_id = rng.randbytes(7) + b"\x01"
    span.kind = rng.randrange(6)
    span.start_time_unix_nano = 1_700_000_000_000_000_000 + rng.randrange(10**12)
    span.end_time_unix_nano = span.start_time_unix_nano + rng.randrange(10**9)
    span.status.code = rng.choice((Status.STATUS_CODE_UNSET, Status.STATUS_CODE_OK, Status.STATUS_CODE_ERROR))
    span.attributes.add(key="gen_ai.request.model", value=AnyValue(string_value="gpt-4o"))
    span.attributes.add(key="gen_ai.usage.input_tokens", value=AnyValue(int_value=rng.randrange(1000)))


def _break_span(rng: random.Random, span: Span) -> None:
    defect = rng.randrange(6)
    if defect == 0:
        span.trace_id = rng.randbytes(rng.choice((0, 1, 8, 15, 17, 32)))
    elif defect == 1:
        span.trace_id = bytes(16)
    elif defect == 2:
        span.span_id = rng.randbytes(rng.choice((0, 4, 7, 9, 16)))
    elif defect == 3:
        span.span_id = bytes(8)
    elif defect == 4:
        span.parent_span_id = rng.randbytes(rng.choice((1, 7, 9, 16)))
    else:
        span.end_time_unix_nano = (1 << 63) + rng.randrange(1 << 62)  # past int64 nanoseconds


# --- the seed corpus -------------------------------------------------------------------------


ALL_KINDS = {"s": "prompt ✓ ünïcode", "empty": "", "b": True, "i": -(2**63), "u": 2**63 - 1, "d": 0.25,
             "nan": math.nan, "inf": math.inf, "ninf": -math.inf, "bytes": b"\x00\xff\x10", "none": None,
             "arr": [1, "two", 3.5, False, None, [b"\x01", {"k": [[]]}]],
             "kv": {"model": "gpt-4o", "nested": {"tokens": [1, 2, 3], "deeper": {"x": {"y": None}}}, "e": {}}}


def _sdk_genai_request() -> ExportTraceServiceRequest:
    """An agent run as the real OpenTelemetry SDK records and encodes it."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.sdk.trace.id_generator import IdGenerator
    from opentelemetry.trace import Link, SpanContext, SpanKind, StatusCode, TraceFlags, TraceState

    rng = random.Random(11)

    class SeededIds(IdGenerator):
        def generate_span_id(self) -> int:
            return rng.getrandbits(64) | 1

        def generate_trace_id(self) -> int:
            return rng.getrandbits(128) | 1

    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "support-agent", "service.version": "1.4.2",
                                                        "deployment.environment.name": "prod",
                                                        "service.instance.id": "support-agent-1"}),
                              id_generator=SeededIds())
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("agent-sre.fuzz", "1.0", attributes={"scope.kind": "agent"})
    t = 1_700_000_000_000_000_000
    other = SpanContext(rng.getrandbits(128), rng.getrandbits(64), True, TraceFlags(1),
                        TraceState([("vendor", "v1")]))
    with tracer.start_as_current_span("invoke_agent support", start_time=t, end_on_exit=False, attributes={
            "gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "support", "gen_ai.agent.id": "asst_1",
            "gen_ai.conversation.id": "conv-1", "agent.task.name": "refund"}) as agent:
        chat = tracer.start_span("chat gpt-4o", kind=SpanKind.CLIENT, start_time=t + 1_000, attributes={
            "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o",
            "gen_ai.response.model": "gpt-4o-2024-08-06", "gen_ai.usage.input_tokens": 120,
            "gen_ai.usage.output_tokens": 30, "gen_ai.request.temperature": 0.2,
            "gen_ai.response.finish_reasons": ["stop"], "gen_ai.request.stop_sequences": ("\n\n", "END")})
        chat.add_event("gen_ai.content.prompt", {"gen_ai.prompt": "Refund order 42?"}, timestamp=t + 2_000)
        chat.add_event("gen_ai.content.completion", {"gen_ai.completion": "Done.", "tokens": [1, 2]},
                       timestamp=t + 3_000)
        chat.set_status(StatusCode.OK)
        chat.end(end_time=t + 900_000)
        tool = tracer.start_span("execute_tool get_weather", start_time=t + 1_000_000,
                                 links=[Link(other, {"link.reason": "retry", "attempt": 2})],
                                 attributes={"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "get_weather",
                                             "agent.trust_score": 0.87, "ok": False})
        tool.record_exception(TimeoutError("upstream timed out"), timestamp=t + 1_500_000)
        tool.set_status(StatusCode.ERROR, "timeout")
        tool.end(end_time=t + 2_000_000)
        agent.end(end_time=t + 3_000_000)
    return encode_spans(exporter.get_finished_spans())


def _any_values_request() -> ExportTraceServiceRequest:
    """Every AnyValue kind, nested kvlists and arrays, on every attribute holder."""
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.extend([kv("service.name", "kinds"), *(kv(k, v) for k, v in ALL_KINDS.items())])
    rs.resource.dropped_attributes_count = 1
    ss = rs.scope_spans.add()
    ss.scope.name, ss.scope.version = "kinds", "0.1"
    ss.scope.attributes.extend(kv(k, v) for k, v in ALL_KINDS.items())
    for i in range(3):
        span = ss.spans.add(trace_id=bytes(range(1, 17)), span_id=bytes([i + 1] * 8), name=f"kinds-{i}",
                            kind=i + 1, start_time_unix_nano=1_700_000_000_000_000_000 + i,
                            end_time_unix_nano=1_700_000_000_100_000_000, trace_state="a=1,b=2", flags=0x301,
                            dropped_attributes_count=i, dropped_events_count=1, dropped_links_count=2)
        if i:
            span.parent_span_id = bytes([1] * 8)
        span.attributes.extend(kv(k, v) for k, v in ALL_KINDS.items())
        event = span.events.add(time_unix_nano=1_700_000_000_050_000_000, name="gen_ai.choice")
        event.attributes.extend(kv(k, v) for k, v in ALL_KINDS.items())
        link = span.links.add(trace_id=bytes(range(16, 32)), span_id=bytes(range(8)), trace_state="x=y", flags=1)
        link.attributes.extend([kv("arr", ALL_KINDS["arr"]), kv("kv", ALL_KINDS["kv"])])
        span.status.code, span.status.message = Status.STATUS_CODE_ERROR, "boom"
    return req


def _multi_resource_request() -> ExportTraceServiceRequest:
    req = ExportTraceServiceRequest()
    rng = random.Random(5)
    for r in range(3):
        rs = req.resource_spans.add(schema_url="https://opentelemetry.io/schemas/1.26.0")
        rs.resource.attributes.extend([kv("service.name", f"svc-{r}"), kv("deployment.environment", "dev")])
        for s in range(2):
            ss = rs.scope_spans.add()
            ss.scope.name = f"lib-{s}"
            for i in range(3):
                span = ss.spans.add()
                _fill_span(rng, span)
                span.name = f"op-{r}-{s}-{i}"
    return req


def _partial_request() -> ExportTraceServiceRequest:
    req, _, _ = mixed_request(random.Random(0), "seed")  # 3 valid and 6 invalid spans, 2 resources
    return req


_LENIENT_JSON = {"resource_spans": [{"resource": {"attributes": [
    {"key": "service.name", "value": {"string_value": "lenient"}}, {"key": "n", "value": None}]},
    "scopeSpans": [{"scope": {"name": "json"}, "spans": [
        {"traceId": "5B8EFFF798038103D269B633813FC60C", "span_id": "eee19b7ec3c1b174", "name": "lenient",
         "kind": "SPAN_KIND_SERVER", "startTimeUnixNano": 1700000000000000000, "end_time_unix_nano": "1700000000100000000",
         "status": {"code": "STATUS_CODE_ERROR", "message": "x"}, "droppedAttributesCount": "3", "flags": 1.0,
         "attributes": [{"key": "d", "value": {"doubleValue": "NaN"}}, {"key": "i", "value": {"intValue": "-9"}},
                        {"key": "b", "value": {"bytesValue": "AP8Q"}}, {"key": "e", "value": {}}],
         "events": [{"timeUnixNano": "1700000000050000000", "name": "e", "attributes": []}],
         "links": [{"traceId": "5b8efff798038103d269b633813fc60d", "spanId": "eee19b7ec3c1b175"}],
         "unknownField": {"ignored": [1, 2]}}]}]}]}


def _regression_requests() -> dict[str, bytes]:
    """Cases that once broke a decoder (each found by test_fuzz.py), encoded by hand."""

    def request_with(*spans: bytes) -> bytes:
        scope = b"".join(tag(2, LEN) + varint(len(s)) + s for s in spans)  # ScopeSpans.spans
        resource = tag(2, LEN) + varint(len(scope)) + scope  # ResourceSpans.scope_spans
        return tag(1, LEN) + varint(len(resource)) + resource

    def span(name: bytes, trace_id: bytes, *attributes: bytes) -> bytes:
        return (tag(1, LEN) + varint(len(trace_id)) + trace_id + tag(2, LEN) + b"\x08" + b"\x02" * 8
                + tag(5, LEN) + varint(len(name)) + name
                + b"".join(tag(9, LEN) + varint(len(a)) + a for a in attributes))

    model = kv("gen_ai.request.model", "gpt-4o").SerializeToString()
    # A KeyValue whose value claims 2^31 bytes: not protobuf.  The columnar path never parsed the
    # attributes of spans it rejected (here: a 15-byte trace id), so it answered 200 + partial_success
    # where protobuf's parser (and so the JSON path) refuses the request: 400.
    corrupt = b"\x0a\x01k\x12\x80\x80\x80\x80\x08\x18\x01"
    # An attribute nested 48 arrays deep is 102 messages deep in its request, past protobuf's limit
    # of 100; decoded on its own the KeyValue was allowed 4 more levels, so the columnar path accepted it.
    return {
        "regression_decoder_rejected_span_with_corrupt_attribute": request_with(
            span(b"kept", b"\x01" * 16, model), span(b"rejected", b"\x01" * 15, model, corrupt)),
        "regression_decoder_attribute_nested_past_the_limit": request_with(
            span(b"deep", b"\x01" * 16, model, _nested_key_value(48))),
    }


def _overflow_request() -> ExportTraceServiceRequest:
    """Token counts and task durations whose sums leave int64: the store's per-minute agent rollup
    failed on every retry and every later insert with it, so one span stopped the store."""
    big = 2**63 - 1
    req = ExportTraceServiceRequest()
    ss = req.resource_spans.add().scope_spans.add()
    for i, (operation, tokens, start) in enumerate([("chat", (big, big), 1), ("chat", (big, 1), 1),
                                                     ("chat", (-(2**63), -1), 1), ("invoke_agent", (0, 0), 1),
                                                     ("invoke_agent", (0, 0), 1), ("invoke_agent", (0, 0), big)]):
        span = ss.spans.add(trace_id=bytes([i + 1] * 16), span_id=bytes([i + 1] * 8), name=f"overflow-{i}",
                            start_time_unix_nano=start, end_time_unix_nano=big if start == 1 else 0)
        span.attributes.extend([kv("gen_ai.operation.name", operation), kv("gen_ai.request.model", "m"),
                                kv("gen_ai.usage.input_tokens", tokens[0]),
                                kv("gen_ai.usage.output_tokens", tokens[1])])
    return req


def _nested_key_value(depth: int) -> bytes:
    """KeyValue "deep" whose value is ``depth`` nested arrays (AnyValue refuses to build it past the limit)."""
    value = AnyValue(string_value="deep").SerializeToString()
    for _ in range(depth):
        values = tag(1, LEN) + varint(len(value)) + value  # ArrayValue.values
        value = tag(5, LEN) + varint(len(values)) + values  # AnyValue.array_value
    return tag(1, LEN) + b"\x04deep" + tag(2, LEN) + varint(len(value)) + value


def write_corpus() -> None:
    requests = {"sdk_genai_agent": _sdk_genai_request(), "any_values": _any_values_request(),
                "multi_resource": _multi_resource_request(), "partial_success": _partial_request()}
    CORPUS.mkdir(exist_ok=True)
    for name, req in requests.items():
        (CORPUS / f"{name}.pb").write_bytes(req.SerializeToString(deterministic=True))
        (CORPUS / f"{name}.json").write_bytes(encode_trace_request(req))
    (CORPUS / "lenient.json").write_bytes(_dump(_LENIENT_JSON))
    for name, body in _regression_requests().items():
        (CORPUS / f"{name}.pb").write_bytes(body)
    overflow = _overflow_request()
    (CORPUS / "regression_store_rollup_sums_past_int64.pb").write_bytes(overflow.SerializeToString(deterministic=True))
    (CORPUS / "regression_store_rollup_sums_past_int64.json").write_bytes(encode_trace_request(overflow))
    (CORPUS / "empty.pb").write_bytes(b"")


if __name__ == "__main__":
    write_corpus()
