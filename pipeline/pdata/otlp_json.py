"""OTLP/JSON for traces: request bodies in, response bodies out.

OTLP/JSON is the proto3 JSON mapping with the OTLP specification's deviations:

* ``traceId``, ``spanId`` and ``parentSpanId`` (in spans and in links) are
  case-insensitive hex strings, not base64;
* keys are lowerCamelCase; enum values are integers;
* unknown fields are ignored.

Decoding is lenient the way protobuf's own JSON parser is: original snake_case
field names and enum names are accepted too, 64-bit integers may be decimal
strings or numbers, ``null`` means "not set", and an unknown enum *name* is
ignored like an unknown field.

An id that is valid hex of the wrong length (say 30 digits) is not a decoding
error: it becomes bytes of that length and ``otlp_arrow.request_to_table``
rejects that one span with ``partial_success``.  An id that is not hex at all,
or has an odd number of digits, cannot be turned into bytes and fails the
whole request with ``OtlpJsonError``.

The decoder walks the JSON with a table built once from the protobuf
descriptors and builds the request in one constructor call.  It replaces
``json_format.ParseDict`` (which would need the ids rewritten to base64 first)
because it is about 3.5x faster (33 ms against 124 ms for 1,000 spans with
9 attributes each) and its errors carry the full JSON path, e.g.
``resourceSpans[0].scopeSpans[1].spans[3].traceId: not a hex string: 'zz'``.
The property tests check that it agrees with ``ParseDict`` on every valid body.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

__all__ = ["OtlpJsonError", "decode_request", "decode_trace_request", "encode_message", "encode_request",
           "encode_trace_request"]

# Message nesting allowed in a body; protobuf's JSON parser and upb's binary
# decoder both stop at 100, and a request we accept must re-serialise.
_MAX_DEPTH = 100
_HEX_ID_FIELDS = frozenset({"trace_id", "span_id", "parent_span_id"})
_SKIP = object()  # a decoded value meaning "leave the field unset"
_M = TypeVar("_M", bound=Message)

_SURROGATE = re.compile("[\ud800-\udfff]")
_INTEGER = re.compile(r"-?[0-9]+")
_NUMBER = re.compile(r"-?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")
_HEX_DIGITS = re.compile(r"[0-9a-fA-F]*")
_URLSAFE_TO_STD = str.maketrans("-_", "+/")
_FLOAT_NAMES = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
_FLOAT_MAX = 3.4028234663852886e38


class OtlpJsonError(ValueError):
    """An OTLP/JSON body that cannot be decoded; the message says what and where."""


class _FieldError(Exception):
    """A problem with one JSON value; the path is collected, innermost first, on the way up."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem
        self.path: list[str | int] = []

    def render(self) -> str:
        where = ""
        for segment in reversed(self.path):
            if isinstance(segment, int):
                where += f"[{segment}]"
            else:
                where += f".{segment}" if where else segment
        return f"{where or 'request body'}: {self.problem}"


def _describe(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return f"number {value!r}"
    if isinstance(value, str):
        return f"string {_clip(value)!r}"
    return "an array" if isinstance(value, list) else "an object"


def _clip(text: str, limit: int = 48) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


# --- scalar decoders: (json value, depth) -> python value ------------------------

Decoder = Callable[[Any, int], Any]


def _string(value: Any, depth: int) -> str:
    if type(value) is not str:
        raise _FieldError(f"expected a string, got {_describe(value)}")
    if not value.isascii() and _SURROGATE.search(value):
        raise _FieldError(f"string has an unpaired surrogate: {_clip(value)!r}")
    return value


def _hex_id(value: Any, depth: int) -> bytes:
    if type(value) is not str:
        raise _FieldError(f"expected a hex string, got {_describe(value)}")
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raw = None
    # fromhex skips whitespace, so equal lengths also mean "no whitespace".
    if raw is None or 2 * len(raw) != len(value):
        if _HEX_DIGITS.fullmatch(value):
            raise _FieldError(f"odd number of hex digits: {_clip(value)!r}")
        raise _FieldError(f"not a hex string: {_clip(value)!r}")
    return raw


def _base64(value: Any, depth: int) -> bytes:
    if type(value) is not str:
        raise _FieldError(f"expected a base64 string, got {_describe(value)}")
    # The proto3 JSON mapping accepts standard and URL-safe alphabets, padded or not.
    text = value.rstrip("=").translate(_URLSAFE_TO_STD)
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise _FieldError(f"not a base64 string: {_clip(value)!r}") from None


def _bool(value: Any, depth: int) -> bool:
    if type(value) is not bool:
        raise _FieldError(f"expected true or false, got {_describe(value)}")
    return value


def _double(value: Any, depth: int) -> float:
    kind = type(value)
    if kind is float:
        if math.isfinite(value):
            return value
        raise _FieldError('number out of range for a double (write "Infinity" as a string)')
    if kind is int:
        try:
            return float(value)
        except OverflowError:
            raise _FieldError("number out of range for a double") from None
    if kind is str:
        special = _FLOAT_NAMES.get(value)
        if special is not None:
            return special
        if _NUMBER.fullmatch(value):
            return float(value)
    raise _FieldError(f"expected a number, got {_describe(value)}")


def _float(value: Any, depth: int) -> float:
    number = _double(value, depth)
    if math.isfinite(number) and abs(number) > _FLOAT_MAX:
        raise _FieldError(f"{number!r} is out of range for a float")
    return number


def _to_int(value: Any) -> int | None:
    kind = type(value)
    if kind is int:
        return value
    if kind is str:
        if _INTEGER.fullmatch(value):
            return int(value)
        if _NUMBER.fullmatch(value):
            value = float(value)
            kind = float
    if kind is float and value.is_integer():
        return int(value)
    return None


def _integer(low: int, high: int, type_name: str) -> Decoder:
    def decode(value: Any, depth: int) -> int:
        number = _to_int(value)
        if number is None:
            raise _FieldError(f"expected an integer, got {_describe(value)}")
        if not low <= number <= high:
            raise _FieldError(f"{number} is out of range for {type_name}")
        return number

    return decode


_INT32 = _integer(-(2**31), 2**31 - 1, "int32")
_INTEGER_DECODERS: dict[int, Decoder] = {
    FieldDescriptor.TYPE_INT32: _INT32,
    FieldDescriptor.TYPE_SINT32: _INT32,
    FieldDescriptor.TYPE_SFIXED32: _INT32,
    FieldDescriptor.TYPE_UINT32: _integer(0, 2**32 - 1, "uint32"),
    FieldDescriptor.TYPE_FIXED32: _integer(0, 2**32 - 1, "fixed32"),
    FieldDescriptor.TYPE_INT64: _integer(-(2**63), 2**63 - 1, "int64"),
    FieldDescriptor.TYPE_SINT64: _integer(-(2**63), 2**63 - 1, "sint64"),
    FieldDescriptor.TYPE_SFIXED64: _integer(-(2**63), 2**63 - 1, "sfixed64"),
    FieldDescriptor.TYPE_UINT64: _integer(0, 2**64 - 1, "uint64"),
    FieldDescriptor.TYPE_FIXED64: _integer(0, 2**64 - 1, "fixed64"),
}


def _enum(enum_type: EnumDescriptor) -> Decoder:
    by_name = {v.name: v.number for v in enum_type.values}

    def decode(value: Any, depth: int) -> Any:
        if type(value) is str and value in by_name:
            return by_name[value]
        number = _to_int(value)
        if number is None:
            if type(value) is str:
                return _SKIP  # proto3 JSON: an unknown enum name is ignored like an unknown field
            raise _FieldError(f"expected an enum number, got {_describe(value)}")
        if not -(2**31) <= number <= 2**31 - 1:
            raise _FieldError(f"{number} is out of range for enum {enum_type.name}")
        return number  # proto3 enums are open: unknown numbers are kept

    return decode


# --- messages: a table per message type, built once from the descriptors --------


class _Field(NamedTuple):
    name: str  # the proto field name, used as the constructor keyword
    decode: Decoder
    oneof: str | None


_TABLES: dict[str, dict[str, _Field]] = {}


def _field_table(message_type: Descriptor) -> dict[str, _Field]:
    """JSON key (lowerCamelCase and the original name) -> field, for one message type."""
    table = _TABLES.get(message_type.full_name)
    if table is None:
        table = _TABLES[message_type.full_name] = {}  # registered first: AnyValue is recursive
        for field in message_type.fields:
            oneof = field.containing_oneof.name if field.containing_oneof else None
            entry = _Field(field.name, _field_decoder(field), oneof)
            table[field.json_name] = entry
            table[field.name] = entry
    return table


def _field_decoder(field: FieldDescriptor) -> Decoder:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        assert field.message_type is not None  # set on every message field
        item = _message_decoder(field.message_type)
    elif field.type == FieldDescriptor.TYPE_BYTES:
        item = _hex_id if field.name in _HEX_ID_FIELDS else _base64
    elif field.type == FieldDescriptor.TYPE_ENUM:
        assert field.enum_type is not None  # set on every enum field
        item = _enum(field.enum_type)
    elif field.type == FieldDescriptor.TYPE_STRING:
        item = _string
    elif field.type == FieldDescriptor.TYPE_BOOL:
        item = _bool
    elif field.type == FieldDescriptor.TYPE_DOUBLE:
        item = _double
    elif field.type == FieldDescriptor.TYPE_FLOAT:
        item = _float
    else:
        item = _INTEGER_DECODERS[field.type]
    return _repeated(item) if _is_repeated(field) else item


def _is_repeated(field: FieldDescriptor) -> bool:
    try:
        return field.is_repeated  # newer protobuf (the 7.x installed here has no `label`)
    except AttributeError:
        # Older protobuf: the stubs describe the newest, which has no `label`.
        return field.label == FieldDescriptor.LABEL_REPEATED  # type: ignore[attr-defined]


def _message_decoder(message_type: Descriptor) -> Decoder:
    # Well-known types and maps have JSON forms of their own; OTLP traces use neither.
    if message_type.full_name.startswith("google.protobuf.") or message_type.GetOptions().map_entry:
        raise TypeError(f"OTLP/JSON decoder does not support {message_type.full_name}")
    table = _field_table(message_type)
    has_oneof = bool(message_type.oneofs)

    def decode(value: Any, depth: int) -> dict[str, Any]:
        if type(value) is not dict:
            raise _FieldError(f"expected an object, got {_describe(value)}")
        if depth >= _MAX_DEPTH:
            raise _FieldError(f"nested deeper than {_MAX_DEPTH} messages")
        return _decode_fields(value, table, has_oneof, depth + 1)

    return decode


def _repeated(item: Decoder) -> Decoder:
    def decode(value: Any, depth: int) -> list[Any]:
        if type(value) is not list:
            raise _FieldError(f"expected an array, got {_describe(value)}")
        out: list[Any] = []
        append = out.append
        for index, v in enumerate(value):
            try:
                append(item(v, depth))
            except _FieldError as exc:
                exc.path.append(index)
                raise
        return out

    return decode


def _decode_fields(obj: dict, table: dict[str, _Field], has_oneof: bool, depth: int) -> dict[str, Any]:
    """One JSON object to constructor keywords (proto field name -> value)."""
    out: dict[str, Any] = {}
    oneofs: set[str] = set()
    for key, value in obj.items():
        field = table.get(key)
        if field is None or value is None:
            continue  # unknown fields are ignored; null means "not set"
        try:
            decoded = field.decode(value, depth)
            if decoded is _SKIP:
                continue
            if field.name in out:
                raise _FieldError("field is given twice (as lowerCamelCase and as its original name)")
            if has_oneof and field.oneof is not None:
                if field.oneof in oneofs:
                    raise _FieldError(f"more than one field of oneof '{field.oneof}' is set")
                oneofs.add(field.oneof)
        except _FieldError as exc:
            exc.path.append(key)
            raise
        out[field.name] = decoded
    return out


_REQUEST_TABLE = _field_table(ExportTraceServiceRequest.DESCRIPTOR)
_HEX_KEYS = ("traceId", "spanId", "parentSpanId")


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON value")


def decode_trace_request(body: bytes) -> ExportTraceServiceRequest:
    """Decode an OTLP/JSON ExportTraceServiceRequest body; an empty body is an empty request.

    Raises OtlpJsonError for a body that is not JSON, not an object, has a value
    of the wrong type, or an id that is not hex.
    """
    return decode_request(body, ExportTraceServiceRequest)


def decode_request(body: bytes, message_class: type[_M]) -> _M:
    """Decode an OTLP/JSON body of any Export*ServiceRequest (traces, metrics, logs): the same rules,
    hex ``traceId``/``spanId`` wherever they occur (spans, links, log records, exemplars)."""
    if not body or body.isspace():
        return message_class()
    try:
        obj = json.loads(body, parse_constant=_reject_constant)
    except RecursionError:
        raise OtlpJsonError("request body: JSON is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, NaN/Infinity literals
        raise OtlpJsonError(f"request body is not valid JSON: {exc}") from exc
    if type(obj) is not dict:
        raise OtlpJsonError(f"request body: expected a JSON object, got {_describe(obj)}")
    try:
        # The stubs type DESCRIPTOR as descriptor.Descriptor or upb's own class; upb's descriptors are
        # instances of descriptor.Descriptor (its metaclass says so), as the generated stubs declare.
        table = (_REQUEST_TABLE if message_class is ExportTraceServiceRequest
                 else _field_table(message_class.DESCRIPTOR))  # type: ignore[arg-type]
        return message_class(**_decode_fields(obj, table, False, 1))
    except _FieldError as exc:
        raise OtlpJsonError(exc.render()) from None
    except (TypeError, ValueError) as exc:  # should be unreachable: every value was checked above
        raise OtlpJsonError(f"request body: {exc}") from exc


# --- encoding ------------------------------------------------------------------


def _dumps(document: object) -> bytes:
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def _ids_to_hex(obj: dict, keys: tuple[str, ...]) -> None:
    for key in keys:
        if key in obj:
            obj[key] = base64.b64decode(obj[key]).hex()


def encode_trace_request(request: ExportTraceServiceRequest) -> bytes:
    """OTLP/JSON for a request: lowerCamelCase keys, hex ids, integer enums, int64 as strings."""
    document = json_format.MessageToDict(request, use_integers_for_enums=True)
    for resource_spans in document.get("resourceSpans", ()):
        for scope_spans in resource_spans.get("scopeSpans", ()):
            for span in scope_spans.get("spans", ()):
                _ids_to_hex(span, ("traceId", "spanId", "parentSpanId"))
                for link in span.get("links", ()):
                    _ids_to_hex(link, ("traceId", "spanId"))
    return _dumps(document)


def encode_request(request: Message) -> bytes:
    """OTLP/JSON of any Export*ServiceRequest: every traceId/spanId/parentSpanId as hex."""
    document = json_format.MessageToDict(request, use_integers_for_enums=True)
    _hex_everywhere(document)
    return _dumps(document)


def _hex_everywhere(node: object) -> None:
    if isinstance(node, dict):
        _ids_to_hex(node, _HEX_KEYS)
        for value in node.values():
            _hex_everywhere(value)
    elif isinstance(node, list):
        for value in node:
            _hex_everywhere(value)


def encode_message(message: Message) -> bytes:
    """OTLP/JSON for a message without ids (ExportTraceServiceResponse, google.rpc.Status)."""
    return _dumps(json_format.MessageToDict(message, use_integers_for_enums=True))
