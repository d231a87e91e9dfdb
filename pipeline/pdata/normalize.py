"""Fill the canonical agent columns from span and resource attributes.

The mapping is data (``conventions.yaml``); this module only loads it and applies
it column-wise.  Per batch the work is:

1. flatten each attribute map to (key, value, span) entries, zero-copy;
2. find each entry's key in the table's key list with one hash lookup
   (``pc.index_in``); everything known about a key (column, rank, role rule)
   then comes from small per-key lookup arrays, indexed with numpy;
3. per (column, span), keep the entry with the lowest rank (span-level entries
   rank before resource-level ones): one loop over the entries in C
   (``_normalize.c``), else ``np.minimum.at`` over the (entry, row) pairs;
4. ``pc.take`` the winning values of all columns at once and cast them
   leniently, once per column type.

span_role comes from the same key ids plus a (key, value) lookup on the few
entries whose value a rule names.

Pattern rows (``{key, pattern}``) read a value out of an attribute with a regex
(``pc.extract_regex``), run only on the entries of their key whose ``when`` holds:
each match becomes one more entry of a key of its own (a "virtual" key), ranked
like any other row.  A pattern row with a ``role`` gives that role to the spans it
matches, ahead of every role rule.

No Python code runs per span or per attribute entry.  Per-key lookup arrays
carry one extra trailing slot for "key not in the table", so an index of -1
(numpy's last element) reads that slot instead of needing a mask.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, TypeAlias

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import yaml

from agent_sre.pipeline.pdata.schema import AGENT_COLUMNS, SPAN_ROLES, SPAN_SCHEMA

try:  # the per-entry step in C (pipeline/pdata/_normalize.c); optional, as the other C modules
    from agent_sre.pipeline.pdata import _normalize as _c_normalize  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - built without a C compiler
    _c_normalize = None

__all__ = ["SHIPPED_CONVENTIONS", "ColumnRow", "Conventions", "RoleRule", "load_conventions", "normalize"]

SHIPPED_CONVENTIONS = Path(__file__).with_name("conventions.yaml")
PURE_NUMPY_ENV = "AGENT_SRE_PURE_NUMPY_NORMALIZE"  # set: the numpy path even where the C step is built
_MAPPABLE_COLUMNS = [c for c in AGENT_COLUMNS if c != "span_role"]  # span_role comes from `roles`
_COLUMN_ID = {name: i for i, name in enumerate(AGENT_COLUMNS)}
# Mappable column ids grouped by type, so each type is cast once per batch.
_COLUMNS_BY_TYPE = [
    (to, [_COLUMN_ID[c] for c in _MAPPABLE_COLUMNS if SPAN_SCHEMA.field(c).type == to])
    for to in dict.fromkeys(SPAN_SCHEMA.field(c).type for c in _MAPPABLE_COLUMNS)
]
_EXCEPTION_EVENT = pa.array(["exception"])
_EXCEPTION_TYPE = pa.array(["exception.type"])
_AnyArray: TypeAlias = pa.Array | pa.ChunkedArray


# --- the table as data -----------------------------------------------------------


@dataclass(frozen=True)
class ColumnRow:
    """One precedence row: ``key`` fills ``column``, only where span attribute when[0] == when[1].

    With ``pattern`` (a regex with one capture group) the row gives the group's text where the
    attribute's value matches, and nothing where it does not; with ``role`` as well, a span it
    matches gets that span_role before any role rule is tried.
    """

    column: str
    key: str
    when: tuple[str, str] | None = None
    pattern: str | None = None
    role: str | None = None


@dataclass(frozen=True)
class RoleRule:
    """``role`` for spans whose attribute ``key`` equals ``value`` (or is present, if value is None)."""

    role: str
    key: str
    value: str | None = None


@dataclass(frozen=True)
class Conventions:
    """A validated normalisation table; build it with :func:`load_conventions`.

    ``columns`` maps each canonical column to its rows in precedence order.
    ``value_rules`` then ``presence_rules`` decide ``span_role``, first match wins,
    else ``default_role``.  The lookup arrays normalize() uses are built once, here.
    """

    columns: Mapping[str, tuple[ColumnRow, ...]]
    value_rules: tuple[RoleRule, ...]
    presence_rules: tuple[RoleRule, ...]
    default_role: str = "other"
    _plan: _Plan = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_plan", _compile(self))


# --- loading and validation ------------------------------------------------------


def load_conventions(path: str | Path | None = None, extra: Mapping[str, Any] | None = None) -> Conventions:
    """Load a normalisation table (the shipped one by default) and validate it.

    ``extra`` is a dict in the same shape as the YAML; its rows go before the
    table's rows, so they win.  A malformed row raises ValueError naming it.
    """
    source = Path(path) if path is not None else SHIPPED_CONVENTIONS
    with open(source, encoding="utf-8") as f:
        base = _parse_table(yaml.safe_load(f), source.name)
    table = _merge(_parse_table(extra, "extra"), base) if extra else base
    return _build(table)


@dataclass
class _Table:
    """A parsed, not yet merged table; presence rules may still name a column."""

    columns: dict[str, list[ColumnRow]] = field(default_factory=dict)
    value_rules: list[RoleRule] = field(default_factory=list)
    presence: list[tuple[str, str, str]] = field(default_factory=list)  # (role, "key"|"column", name)
    default_role: str | None = None


def _fail(where: str, problem: str) -> ValueError:
    return ValueError(f"agent_semconv conventions: {where}: {problem}")


def _mapping(value: object, where: str) -> dict:
    if not isinstance(value, dict):
        raise _fail(where, f"expected a mapping, got {value!r}")
    return value


def _text(value: object, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise _fail(where, f"expected a non-empty string, got {value!r}")
    return value


def _parse_table(doc: object, source: str) -> _Table:
    doc = _mapping(doc if doc is not None else {}, source)
    unknown = set(doc) - {"version", "columns", "roles"}
    if unknown:
        raise _fail(source, f"unknown keys {sorted(unknown)} (valid: version, columns, roles)")
    if doc.get("version", 1) != 1:
        raise _fail(f"{source}: version", f"only version 1 is supported, got {doc['version']!r}")
    table = _Table()
    for column, rows in _mapping(doc.get("columns") or {}, f"{source}: columns").items():
        table.columns[column] = _parse_column(column, rows, f"{source}: columns.{column}")
    roles = _mapping(doc.get("roles") or {}, f"{source}: roles")
    unknown = set(roles) - {"values", "presence", "default"}
    if unknown:
        raise _fail(f"{source}: roles", f"unknown keys {sorted(unknown)} (valid: values, presence, default)")
    for i, rule in enumerate(_rows(roles.get("values"), f"{source}: roles.values")):
        table.value_rules.extend(_parse_value_rule(rule, f"{source}: roles.values[{i}]"))
    for i, rule in enumerate(_rows(roles.get("presence"), f"{source}: roles.presence")):
        table.presence.append(_parse_presence_rule(rule, f"{source}: roles.presence[{i}]"))
    if "default" in roles:
        table.default_role = _role(roles["default"], f"{source}: roles.default")
    return table


def _rows(value: object, where: str) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _fail(where, f"expected a list of rows, got {value!r}")
    return value


def _parse_column(column: str, rows: object, where: str) -> list[ColumnRow]:
    if column not in _MAPPABLE_COLUMNS:
        raise _fail(where, f"not a canonical agent column (valid: {', '.join(_MAPPABLE_COLUMNS)})")
    parsed = []
    for i, row in enumerate(_rows(rows, where)):
        if isinstance(row, str):
            parsed.append(ColumnRow(column, _text(row, f"{where}[{i}]")))
            continue
        row = _mapping(row, f"{where}[{i}]")
        if set(row) - {"key", "when", "pattern", "role"}:
            raise _fail(f"{where}[{i}]", f"a row is an attribute key or {{key, when, pattern, role}}, got {row!r}")
        pattern = _parse_pattern(row["pattern"], f"{where}[{i}].pattern") if "pattern" in row else None
        if "role" in row and pattern is None:
            raise _fail(f"{where}[{i}].role", "only a row with a pattern gives a role (the roles section does the rest)")
        role = _role(row["role"], f"{where}[{i}].role") if "role" in row else None
        parsed.append(ColumnRow(column, _text(row.get("key"), f"{where}[{i}].key"),
                                _parse_when(row.get("when"), f"{where}[{i}].when"), pattern, role))
    return parsed


_CAPTURE = "value"  # the name the one capture group gets: pc.extract_regex takes named groups only


def _parse_pattern(pattern: object, where: str) -> str:
    """``pattern`` with its one capture group named, checked by the engine that will run it (RE2)."""
    text = _text(pattern, where)
    named = _name_the_group(text)
    try:
        fields = pc.extract_regex(pa.array([], pa.string()), named).type
    except pa.ArrowInvalid as exc:
        problem = str(exc).splitlines()[0].replace(f"(?P<{_CAPTURE}>", "(")  # the pattern as written
        if "unnamed groups" in problem:
            problem = "more than one capture group; write the others as (?:...)"
        raise _fail(where, f"{text!r} is not a usable pattern: {problem}") from None
    if fields.num_fields != 1:
        raise _fail(where, f"{text!r} needs exactly one capture group (...) around the value, has {fields.num_fields}")
    return named


def _name_the_group(pattern: str) -> str:
    """The first plain capture group ``(`` becomes ``(?P<value>``; escapes and [classes] are skipped."""
    in_class, i = False, 0
    while i < len(pattern):
        char = pattern[i]
        if char == "\\":
            i += 2
            continue
        if in_class:
            in_class = char != "]"
        elif char == "[":
            in_class = True
            if pattern[i + 1:i + 2] == "]":  # a "]" first in a class is a literal
                i += 1
        elif char == "(" and pattern[i + 1:i + 2] != "?":
            return f"{pattern[:i]}(?P<{_CAPTURE}>{pattern[i + 1:]}"
        i += 1
    return pattern


def _parse_when(when: object, where: str) -> tuple[str, str] | None:
    if when is None:
        return None
    when = _mapping(when, where)
    if len(when) != 1:
        raise _fail(where, f"expected exactly one {{attribute: value}} pair, got {when!r}")
    (key, value), = when.items()
    return _text(key, where), _scalar_text(value, where)


def _scalar_text(value: object, where: str) -> str:
    # YAML reads `true`/`1` as bool/int; attribute maps hold their string forms.
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return _text(value, where)


def _role(value: object, where: str) -> str:
    if value not in SPAN_ROLES:
        raise _fail(where, f"unknown role {value!r} (valid: {', '.join(SPAN_ROLES)})")
    return str(value)


def _parse_value_rule(rule: object, where: str) -> list[RoleRule]:
    rule = _mapping(rule, where)
    if set(rule) != {"key", "value", "role"}:
        raise _fail(where, f"a value rule is {{key, value, role}}, got {rule!r}")
    key, role = _text(rule["key"], f"{where}.key"), _role(rule["role"], f"{where}.role")
    values = rule["value"] if isinstance(rule["value"], list) else [rule["value"]]
    return [RoleRule(role, key, _scalar_text(v, f"{where}.value")) for v in values]


def _parse_presence_rule(rule: object, where: str) -> tuple[str, str, str]:
    rule = _mapping(rule, where)
    kinds = set(rule) - {"role"}
    if "role" not in rule or len(kinds) != 1 or not kinds <= {"key", "column"}:
        raise _fail(where, f"a presence rule is {{key, role}} or {{column, role}}, got {rule!r}")
    kind = kinds.pop()
    name = _text(rule[kind], f"{where}.{kind}")
    if kind == "column" and name not in _MAPPABLE_COLUMNS:
        raise _fail(f"{where}.column", f"not a canonical agent column: {name!r}")
    return _role(rule["role"], f"{where}.role"), kind, name


def _merge(first: _Table, then: _Table) -> _Table:
    """``first``'s rows ahead of ``then``'s, so ``first`` wins; repeated rows keep their first place."""
    merged = _Table(value_rules=first.value_rules + then.value_rules,
                    presence=first.presence + then.presence,
                    default_role=first.default_role or then.default_role)
    for column in {**first.columns, **then.columns}:
        rows = first.columns.get(column, []) + then.columns.get(column, [])
        merged.columns[column] = list(dict.fromkeys(rows))
    return merged


def _build(table: _Table) -> Conventions:
    columns = {c: tuple(dict.fromkeys(rows)) for c, rows in table.columns.items()}
    presence: list[RoleRule] = []
    for role, kind, name in table.presence:
        # A column-presence rule means "any unconditional key of that column".
        keys = ([r.key for r in columns.get(name, ()) if r.when is None and r.pattern is None]
                if kind == "column" else [name])
        presence.extend(RoleRule(role, key) for key in keys)
    return Conventions(columns, tuple(table.value_rules), tuple(presence), table.default_role or "other")


# --- the compiled plan: small lookup arrays over the table's keys -----------------


class _PatternRow(NamedTuple):
    source: int      # key id of the attribute the pattern reads
    pattern: str     # with its capture group named
    virtual: int     # key id its matches are entries of (no attribute has it)
    condition: int   # condition id, or -1
    role_rule: int   # rule number of its role, or -1


@dataclass(frozen=True)
class _Plan:
    keys: pa.Array               # every attribute key the table mentions (virtual keys follow, unnamed)
    patterns: tuple[_PatternRow, ...]
    key_has_pattern: np.ndarray  # per key (+ sentinel): some pattern row reads it
    key_rows_start: np.ndarray   # per key (+ sentinel): first row in `row_*` (rows sorted by key)
    key_rows_count: np.ndarray   # per key (+ sentinel): how many column rows it feeds
    row_column: np.ndarray       # column id (index in AGENT_COLUMNS)
    row_rank: np.ndarray         # position in its column's precedence list
    row_condition: np.ndarray    # condition id, or -1 (always true)
    resource_rank_offset: int    # added to resource-level ranks so span-level entries win
    pair_key_slot: np.ndarray    # per key (+ sentinel): row in `pair_of` if its value matters, else -1
    pair_values: pa.Array        # ASCII-lowercased values named by value rules and conditions
    pair_of: np.ndarray          # [key slot, value id (+ sentinel)] -> pair id, or -1
    pair_rule: np.ndarray        # per pair: value-rule number, or no_rule
    pair_condition: np.ndarray   # per pair: condition id, or -1
    n_conditions: int
    key_presence_rule: np.ndarray  # per key (+ sentinel): presence-rule number, or no_rule
    rule_roles: pa.Array         # role per rule number; the last slot (no_rule) is the default

    @property
    def no_rule(self) -> int:
        return len(self.rule_roles) - 1


def _compile(conv: Conventions) -> _Plan:
    key_ids: dict[str, int] = {}
    pair_ids: dict[tuple[str, str], int] = {}
    conditions: dict[int, int] = {}  # pair id -> condition id

    def kid(key: str) -> int:
        return key_ids.setdefault(key, len(key_ids))

    def pid(key: str, value: str) -> int:
        kid(key)
        return pair_ids.setdefault((key, _ascii_lower(value)), len(pair_ids))

    rows: list[tuple[int, int, int, int]] = []  # (key id, column id, rank, condition id)
    pattern_rows: list[tuple[int, ColumnRow]] = []  # (index in rows, row): its key id is set below
    for column, column_rows in conv.columns.items():
        for rank, row in enumerate(column_rows):
            cond = -1 if row.when is None else conditions.setdefault(pid(*row.when), len(conditions))
            if row.pattern is not None:
                pattern_rows.append((len(rows), row))
            rows.append((kid(row.key), _COLUMN_ID[column], rank, cond))
    value_pairs = [pid(r.key, r.value or "") for r in conv.value_rules]
    presence_keys = [kid(r.key) for r in conv.presence_rules]
    # Pattern roles number first: a span a pattern row matched has said the most specific thing.
    roles = [row.role for _, row in pattern_rows if row.role is not None]
    patterns: list[_PatternRow] = []
    n_real = len(key_ids)
    for virtual, (at, row) in enumerate(pattern_rows, start=n_real):
        source, column_id, rank, cond = rows[at]
        rows[at] = (virtual, column_id, rank, cond)
        role_rule = sum(r.role is not None for _, r in pattern_rows[:virtual - n_real]) if row.role else -1
        patterns.append(_PatternRow(source, row.pattern or "", virtual, cond, role_rule))
    n_keys = n_real + len(patterns)
    has_pattern = np.zeros(n_keys + 1, dtype=bool)
    has_pattern[[p.source for p in patterns]] = True
    plan = _row_lookup(rows, n_keys) | _pair_lookup(key_ids, pair_ids, n_keys)
    rules = _rule_lookup(n_keys, pair_ids, conditions, value_pairs, presence_keys, conv, roles)
    for p in patterns:  # a match is a span-level entry of the virtual key: its role works as presence does
        if p.role_rule >= 0:
            rules["key_presence_rule"][p.virtual] = p.role_rule
    return _Plan(keys=pa.array(list(key_ids), pa.string()), patterns=tuple(patterns),
                 key_has_pattern=has_pattern, **plan, **rules)


def _ascii_lower(text: str) -> str:
    # bytes.lower() touches ASCII letters only, as pc.ascii_lower does on the batch side.
    return text.encode("utf-8").lower().decode("utf-8")


def _row_lookup(rows: list[tuple[int, int, int, int]], n_keys: int) -> dict[str, Any]:
    table = np.array(sorted(rows), dtype=np.int64).reshape(-1, 4)  # rows of one key together
    counts = np.bincount(table[:, 0], minlength=n_keys)
    starts = np.cumsum(counts) - counts
    return dict(key_rows_start=np.append(starts, 0), key_rows_count=np.append(counts, 0),
                row_column=table[:, 1].copy(), row_rank=table[:, 2].copy(), row_condition=table[:, 3].copy(),
                resource_rank_offset=int(table[:, 2].max(initial=0)) + 1)


def _pair_lookup(key_ids: dict[str, int], pair_ids: dict[tuple[str, str], int], n_keys: int) -> dict[str, Any]:
    slots = {key: i for i, key in enumerate(dict.fromkeys(k for k, _ in pair_ids))}
    values = {value: i for i, value in enumerate(dict.fromkeys(v for _, v in pair_ids))}
    pair_of = np.full((len(slots), len(values) + 1), -1, dtype=np.int64)  # last column: value not named
    for (key, value), pair in pair_ids.items():
        pair_of[slots[key], values[value]] = pair
    key_slot = np.array([slots.get(key, -1) for key in key_ids] + [-1] * (n_keys - len(key_ids) + 1), dtype=np.int64)
    return dict(pair_key_slot=key_slot, pair_values=pa.array(list(values), pa.string()), pair_of=pair_of)


def _rule_lookup(n_keys: int, pair_ids: dict[tuple[str, str], int], conditions: dict[int, int],
                 value_pairs: list[int], presence_keys: list[int], conv: Conventions,
                 pattern_roles: list[str]) -> dict[str, Any]:
    """Rule numbers: pattern roles, then value rules, then presence rules; no_rule is the default."""
    first_value = len(pattern_roles)
    n_values = first_value + len(value_pairs)
    no_rule = n_values + len(presence_keys)
    # A pair or key named by several rules answers with the first of them.
    pair_rule = np.full(len(pair_ids), no_rule, dtype=np.int64)
    np.minimum.at(pair_rule, np.array(value_pairs, dtype=np.int64), np.arange(first_value, n_values))
    presence = np.full(n_keys + 1, no_rule, dtype=np.int64)
    np.minimum.at(presence, np.array(presence_keys, dtype=np.int64), np.arange(n_values, no_rule))
    pair_condition = np.full(len(pair_ids), -1, dtype=np.int64)
    pair_condition[list(conditions)] = list(conditions.values())
    roles = pattern_roles + [r.role for r in conv.value_rules + conv.presence_rules] + [conv.default_role]
    return dict(pair_rule=pair_rule, pair_condition=pair_condition, n_conditions=len(conditions),
                key_presence_rule=presence, rule_roles=pa.array(roles, pa.string()))


# --- flattening attribute maps ----------------------------------------------------


class _FlatMap(NamedTuple):
    """The entries of one map column: key, value and owning row, and which entries count."""

    keys: pa.Array
    values: pa.Array
    owner: np.ndarray   # row index per entry
    usable: np.ndarray  # the value is not null and the map itself is not null


@dataclass(frozen=True)
class _Entries:
    """Every attribute entry of a batch: span-level entries, resource-level ones, then the values
    pattern rows extracted from them (span-level, then resource-level)."""

    values: pa.Array     # followed by one null: the "no value" slot
    key_id: np.ndarray   # key id in the plan, -1 for keys the table does not mention
    owner: np.ndarray    # span index
    usable: np.ndarray
    n_span: int          # entries [0, n_span) are span-level attributes
    n_real: int = -1     # entries [n_real, n_matched_span) are pattern matches in span attributes,
    n_matched_span: int = -1  # [n_matched_span, null slot) in resource attributes

    @property
    def null_slot(self) -> int:
        return len(self.values) - 1

    def resource_level(self, entry: np.ndarray) -> np.ndarray:
        resource = entry >= self.n_span
        if self.n_real < 0:
            return resource
        return (resource & (entry < self.n_real)) | (entry >= self.n_matched_span)


def _single_array(column: pa.ChunkedArray) -> pa.Array:
    if column.num_chunks == 1:
        return column.chunk(0)
    return column.combine_chunks() if column.num_chunks else pa.array([], column.type)


def _flatten(maps: pa.Array) -> _FlatMap:
    # .keys/.items ignore slicing; .offsets honours it, so slice the children by it.
    offsets = maps.offsets.to_numpy().astype(np.int64) if len(maps) else np.zeros(1, np.int64)
    start, stop = int(offsets[0]), int(offsets[-1])
    lengths = np.diff(offsets)
    keys, values = maps.keys.slice(start, stop - start), maps.items.slice(start, stop - start)
    usable = np.ones(stop - start, dtype=bool)
    if values.null_count:
        usable &= values.is_valid().to_numpy(zero_copy_only=False)
    if maps.null_count:  # a null map's offsets may still span entries; they do not count
        usable &= np.repeat(maps.is_valid().to_numpy(zero_copy_only=False), lengths)
    owner = np.repeat(np.arange(len(maps), dtype=np.int64), lengths)
    return _FlatMap(keys, values, owner, usable)


def _entries(attributes: pa.ChunkedArray, resource_attributes: pa.ChunkedArray, plan: _Plan) -> _Entries:
    span, resource = _flatten(_single_array(attributes)), _flatten(_single_array(resource_attributes))
    return _Entries(
        values=pa.concat_arrays([span.values, resource.values, _ONE_NULL_STRING]),
        key_id=np.concatenate([_key_ids(span.keys, plan), _key_ids(resource.keys, plan)]),
        owner=np.concatenate([span.owner, resource.owner]),
        usable=np.concatenate([span.usable, resource.usable]),
        n_span=len(span.keys),
    )


def _with_pattern_matches(entries: _Entries, plan: _Plan, holds: np.ndarray) -> _Entries:
    """``entries`` plus one entry per pattern match, of the pattern row's virtual key.

    The regex runs only on the entries of a pattern's key on spans where its ``when`` holds (a
    handoff tool's input.value, not every span's); an empty capture is no match."""
    if not plan.patterns:
        return entries
    n_real = entries.null_slot
    candidates = np.flatnonzero(plan.key_has_pattern[entries.key_id] & entries.usable)
    found: list[tuple[np.ndarray, int, pa.Array]] = []  # (source entries, virtual key, values)
    for p in plan.patterns if len(candidates) else ():
        sel = candidates[entries.key_id[candidates] == p.source]
        if p.condition >= 0 and len(sel):
            sel = sel[holds[p.condition, entries.owner[sel]]]
        if len(sel):
            matched = pc.struct_field(pc.extract_regex(pc.take(entries.values, pa.array(sel)), p.pattern), [0])
            hit = _nonempty(matched)
            if hit.any():  # only matches are appended: a batch with none copies nothing
                found.append((sel[hit], p.virtual, matched.filter(pa.array(hit))))
    if not found:
        return entries
    # Span-level matches first, then resource-level ones, so the layout stays two ranges.
    parts = [(sel[level], key, values.filter(pa.array(level)))
             for span_level in (True, False) for sel, key, values in found
             if (level := (sel < entries.n_span) == span_level).any()]
    n_matched_span = n_real + sum(len(sel) for sel, _, _ in parts if sel[0] < entries.n_span)
    values = [v for _, _, v in parts]
    # Appending copies every value of the batch (0.4 ms for 9 MB of input.value strings): measured
    # cheaper than keeping the matches apart and taking from both (1.5 ms for the same batch).
    return _Entries(
        values=pa.concat_arrays([entries.values.slice(0, n_real), *values, _ONE_NULL_STRING]),
        key_id=np.concatenate([entries.key_id, *[np.full(len(sel), key, np.int32) for sel, key, _ in parts]]),
        owner=np.concatenate([entries.owner, *[entries.owner[sel] for sel, _, _ in parts]]),
        usable=np.concatenate([entries.usable, np.ones(sum(map(len, values)), dtype=bool)]),
        n_span=entries.n_span, n_real=n_real, n_matched_span=n_matched_span,
    )


def _nonempty(values: pa.Array) -> np.ndarray:
    return pc.fill_null(pc.greater(pc.utf8_length(values), 0), False).to_numpy(zero_copy_only=False)


def _key_ids(keys: pa.Array, plan: _Plan) -> np.ndarray:
    """Each key's id in the plan, -1 for keys the table does not mention."""
    return _positions(pc.index_in(keys, value_set=plan.keys))


def _positions(found: pa.Array) -> np.ndarray:
    """index_in's answer as numpy int32 with -1 for "not in the set".

    Read from the buffers: pc.fill_null is several times slower on these sizes.
    """
    values = np.frombuffer(found.buffers()[1], dtype=np.int32, count=found.offset + len(found))
    positions = values[found.offset:].copy()  # int32 indexes numpy arrays as well as int64
    if found.null_count:
        valid = np.unpackbits(np.frombuffer(found.buffers()[0], dtype=np.uint8), bitorder="little")
        positions[valid[found.offset:found.offset + len(found)] == 0] = -1
    return positions


# --- span_role: from span-level entries only ------------------------------------------


def _matched_pairs(entries: _Entries, plan: _Plan) -> tuple[np.ndarray, np.ndarray]:
    """(span, pair id) for span entries whose key=value is a value rule or a condition."""
    slot = plan.pair_key_slot[entries.key_id[:entries.n_span]]
    sel = np.flatnonzero((slot >= 0) & entries.usable[:entries.n_span])
    if not len(sel):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    # Only the few entries of rule keys get here.  Matching ignores ASCII case only
    # (rule values are enum-like names), which is also the cheap kernel.
    lowered = pc.ascii_lower(pc.take(entries.values, pa.array(sel)))
    pair = plan.pair_of[slot[sel], _positions(pc.index_in(lowered, value_set=plan.pair_values))]
    hit = pair >= 0
    return entries.owner[sel[hit]], pair[hit]


def _derive_roles(n: int, entries: _Entries, pair_span: np.ndarray, pair_id: np.ndarray,
                  plan: _Plan) -> pa.Array:
    """Lowest-numbered matching rule per span: value rules number before presence rules."""
    best = np.full(n, plan.no_rule, dtype=np.int64)
    np.minimum.at(best, pair_span, plan.pair_rule[pair_id])
    # Span attributes, then the pattern matches in them (their virtual keys carry the row's role).
    for lo, hi in ((0, entries.n_span), (entries.n_real, entries.n_matched_span)):
        presence = plan.key_presence_rule[entries.key_id[lo:hi]]
        hit = np.flatnonzero((presence < plan.no_rule) & entries.usable[lo:hi])
        np.minimum.at(best, entries.owner[lo:hi][hit], presence[hit])
    return pc.take(plan.rule_roles, pa.array(best))


def _condition_matrix(n: int, pair_span: np.ndarray, pair_id: np.ndarray, plan: _Plan) -> np.ndarray:
    """[condition, span] -> holds; the extra last row (condition -1) always holds."""
    holds = np.zeros((plan.n_conditions + 1, n), dtype=bool)
    holds[-1] = True
    cond = plan.pair_condition[pair_id]
    hit = cond >= 0
    holds[cond[hit], pair_span[hit]] = True
    return holds


# --- column values ---------------------------------------------------------------------

# A candidate's score is rank << _ENTRY_BITS | entry: the minimum score per
# (column, span) is its lowest-ranked entry, and the entry comes back with a mask.
_ENTRY_BITS = 40
_ENTRY_MASK = (1 << _ENTRY_BITS) - 1
_NO_RANK = ((1 << (62 - _ENTRY_BITS)) - 1) << _ENTRY_BITS


def _winners(n: int, entries: _Entries, plan: _Plan, holds: np.ndarray) -> np.ndarray:
    """[column id, span] -> index of the winning entry's value, or the null slot: one pass in C
    (``_normalize.winners``), else the same in numpy (``_winners_numpy``)."""
    if _c_normalize is None or os.environ.get(PURE_NUMPY_ENV):
        return _winners_numpy(n, entries, plan, holds)
    best = np.full(len(AGENT_COLUMNS) * n, _NO_RANK | entries.null_slot, dtype=np.int64)
    _c_normalize.winners(best, np.ascontiguousarray(entries.key_id, np.int32), np.ascontiguousarray(entries.usable, bool),
                         np.ascontiguousarray(entries.owner, np.int64), plan.key_rows_start, plan.key_rows_count,
                         plan.row_column, plan.row_rank, plan.row_condition, np.ascontiguousarray(holds, bool), n,
                         entries.n_span, entries.n_real, entries.n_matched_span, plan.resource_rank_offset, _ENTRY_BITS)
    return (best & _ENTRY_MASK).reshape(len(AGENT_COLUMNS), n)


def _winners_numpy(n: int, entries: _Entries, plan: _Plan, holds: np.ndarray) -> np.ndarray:
    sel = np.flatnonzero((plan.key_rows_count[entries.key_id] > 0) & entries.usable)
    entry, row = _expand_rows(sel, entries.key_id[sel], plan)
    owner = entries.owner[entry]
    condition = plan.row_condition[row]
    if (condition >= 0).any():
        keep = holds[condition, owner]
        row, owner, entry = row[keep], owner[keep], entry[keep]
    rank = plan.row_rank[row] + entries.resource_level(entry) * plan.resource_rank_offset
    # Start every (column, span) at a score above any rank that points at the null slot.
    best = np.full(len(AGENT_COLUMNS) * n, _NO_RANK | entries.null_slot, dtype=np.int64)
    np.minimum.at(best, plan.row_column[row] * n + owner, (rank << _ENTRY_BITS) | entry)
    return (best & _ENTRY_MASK).reshape(len(AGENT_COLUMNS), n)


def _expand_rows(entry: np.ndarray, key_id: np.ndarray, plan: _Plan) -> tuple[np.ndarray, np.ndarray]:
    """(entry, row) pairs: a key feeding several rows (columns, conditions) repeats its entry."""
    counts = plan.key_rows_count[key_id]
    first_row = plan.key_rows_start[key_id]
    if counts.max(initial=0) <= 1:
        return entry, first_row
    within = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    return np.repeat(entry, counts), np.repeat(first_row, counts) + within


def _column_values(entries: _Entries, winners: np.ndarray, n: int) -> dict[str, pa.Array]:
    """The winning values of each column that has any, cast to the column's type.

    One take for all columns, ordered by type, then one cast per type: kernel calls,
    not data, dominate at batch sizes like ours.
    """
    has_values = (winners != entries.null_slot).any(axis=1)
    groups = [(to, [c for c in columns if has_values[c]]) for to, columns in _COLUMNS_BY_TYPE]
    order = [c for _, columns in groups for c in columns]
    if not order:
        return {}
    taken = pc.take(entries.values, pa.array(winners[order].ravel()))
    out: dict[str, pa.Array] = {}
    start = 0
    for to, columns in groups:
        cast = _cast(taken.slice(start * n, len(columns) * n), to)
        out.update((AGENT_COLUMNS[c], cast.slice(i * n, n)) for i, c in enumerate(columns))
        start += len(columns)
    return out


# --- lenient casts: a value that does not parse is null, never an error ------------------
#
# Fast path: Arrow's own cast, when every value in the column parses (the usual
# batch).  Slow path, for a batch with junk: keep only the values that match a
# grammar Arrow is known to parse, so each value gets the same answer either way
# (a span's columns never depend on the other spans in its batch).
# Integers: what Arrow parses (decimal in the int64 range, 0x hex), plus a leading
# "+", surrounding spaces and a ".0" tail (JSON encoders send doubles).  Floats:
# decimal or exponent form; nan and inf are dropped.  Flags: true/false/1/0, any case.

_INTEGER_NOISE = r"^\+|\.0*$"            # a leading "+", a ".0" tail
_LEADING_ZEROS, _NO_LEADING_ZEROS = r"^(-?)0+(\d)", r"\1\2"
_SHORT_INTEGER = r"^-?\d{1,18}$"          # 18 digits always fit in int64
_LONG_INTEGER, _LONG_NEGATIVE = r"^\d{19}$", r"^-\d{19}$"
_INT64_MAX_TEXT, _INT64_MIN_TEXT = pa.scalar("9223372036854775807"), pa.scalar("-9223372036854775808")
_HEX_INTEGER = r"^0[xX][0-9a-fA-F]{1,16}$"
_DECIMAL = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"
# Scalars built once: converting a Python value per call costs more than the kernels
# (pyarrow retries an optional import on each conversion).
_NULL_STRING = pa.scalar(None, pa.string())
_NULL_BOOL = pa.scalar(None, pa.bool_())
_NULL_FLOAT = pa.scalar(None, pa.float64())  # every float agent column is float64
_TRUE, _FALSE = pa.scalar(True), pa.scalar(False)
_TRUE_TEXT, _FALSE_TEXT = pa.array(["true", "1"]), pa.array(["false", "0"])
_ERROR, _AGENT_TASK = pa.array(["error"]), pa.scalar("agent_task")
_DELEGATION = pa.scalar("delegation")
_ONE_NULL_STRING = pa.nulls(1, pa.string())


def _cast(strings: pa.Array, to: pa.DataType) -> pa.Array:
    """Attribute strings to the column type ``to``, leniently."""
    if pa.types.is_string(to):
        return strings
    try:
        cast = pc.cast(strings, to)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        cast = _flags_only(strings) if pa.types.is_boolean(to) else pc.cast(_numbers_only(strings, to), to)
    if pa.types.is_floating(to):  # nan, inf and overflowing exponents are not measurements
        return pc.if_else(pc.is_finite(cast), cast, _NULL_FLOAT)
    return cast


def _flags_only(strings: pa.Array) -> pa.Array:
    lowered = pc.utf8_lower(pc.utf8_trim_whitespace(strings))
    truth = pc.if_else(pc.is_in(lowered, _TRUE_TEXT), _TRUE, _NULL_BOOL)
    return pc.if_else(pc.is_in(lowered, _FALSE_TEXT), _FALSE, truth)


def _numbers_only(strings: pa.Array, to: pa.DataType) -> pa.Array:
    trimmed = pc.utf8_trim_whitespace(strings)
    if pa.types.is_floating(to):
        return pc.if_else(pc.match_substring_regex(trimmed, _DECIMAL), trimmed, _NULL_STRING)
    text = pc.replace_substring_regex(trimmed, _INTEGER_NOISE, "")
    text = pc.replace_substring_regex(text, _LEADING_ZEROS, _NO_LEADING_ZEROS)
    # Equal-length digit strings compare as numbers, so 19 digits are checked against the int64 range.
    in_range = pc.or_(
        pc.and_(pc.match_substring_regex(text, _LONG_INTEGER), pc.less_equal(text, _INT64_MAX_TEXT)),
        pc.and_(pc.match_substring_regex(text, _LONG_NEGATIVE), pc.less_equal(text, _INT64_MIN_TEXT)),
    )
    parses = pc.or_(pc.or_(pc.match_substring_regex(text, _SHORT_INTEGER), in_range),
                    pc.match_substring_regex(text, _HEX_INTEGER))
    return pc.if_else(parses, text, _NULL_STRING)


# --- fallbacks that are not attribute lookups ---------------------------------------------


def _derived_task_success(status_code: pa.ChunkedArray, roles: _AnyArray) -> _AnyArray:
    """Task spans without a success attribute succeeded unless their status is error."""
    # is_in answers false for a null status (pc.fill_null on strings is slow).
    ok = pc.invert(pc.is_in(_single_array(status_code), value_set=_ERROR))
    return pc.if_else(pc.equal(roles, _AGENT_TASK), ok, _NULL_BOOL)


def _exception_types(events: pa.Array, n: int) -> pa.Array | None:
    """The exception.type of each span's last "exception" event (the one it ended with)."""
    offsets = events.offsets.to_numpy()
    if not len(events) or offsets[-1] == offsets[0]:  # no events at all: the usual batch
        return None
    flat = events.flatten()
    exc = np.flatnonzero(pc.is_in(pc.struct_field(flat, "name"), value_set=_EXCEPTION_EVENT))
    if not len(exc):
        return None
    span_of_event = pc.list_parent_indices(events).to_numpy()[exc].astype(np.int64)
    attrs = _flatten(pc.take(pc.struct_field(flat, "attributes"), pa.array(exc)))
    is_type = pc.is_in(attrs.keys, value_set=_EXCEPTION_TYPE).to_numpy(zero_copy_only=False)
    hit = np.flatnonzero(is_type & attrs.usable)
    last = np.full(n, -1, dtype=np.int64)
    np.maximum.at(last, span_of_event[attrs.owner[hit]], hit)
    if not (last >= 0).any():
        return None
    return pc.take(attrs.values, pa.array(last, mask=last < 0))


# --- the normalisation ----------------------------------------------------------------------


def normalize(table: pa.Table, conventions: Conventions) -> pa.Table:
    """Return ``table`` in SPAN_SCHEMA with the agent columns filled from its attributes.

    Values already present in an agent column (set by an earlier stage) are kept.
    Attribute maps and all other columns are passed through untouched.
    """
    plan, n = conventions._plan, table.num_rows
    given = dict(zip(table.column_names, table.columns, strict=True))  # one call; by-name lookups cost more
    entries = _entries(given["attributes"], given["resource_attributes"], plan)
    pair_span, pair_id = _matched_pairs(entries, plan)
    holds = _condition_matrix(n, pair_span, pair_id, plan)
    entries = _with_pattern_matches(entries, plan, holds)
    roles = _keep_existing(given["span_role"], _derive_roles(n, entries, pair_span, pair_id, plan))
    derived = _column_values(entries, _winners(n, entries, plan, holds), n)

    filled = dict(given, span_role=roles)
    for name in _MAPPABLE_COLUMNS:
        filled[name] = _keep_existing(given[name], _with_fallback(name, derived.get(name), given, roles, n))
    filled["delegation_from"] = _delegator(filled)
    return pa.Table.from_arrays([filled[name] for name in SPAN_SCHEMA.names], schema=SPAN_SCHEMA)


def _delegator(filled: dict[str, _AnyArray]) -> _AnyArray:
    """A delegation span that names where it goes but not who sent it was sent by its own agent.

    Handoffs recorded as tool calls (Semantic Kernel, LlamaIndex, CrewAI) name only the target;
    the agent whose tool call it is, is the delegator.  A span whose agent comes only from its trace
    gets it in the store (pipeline/storage/attribution.py applies the same rule after inheriting)."""
    given, to, agent = filled["delegation_from"], filled["delegation_to"], filled["agent_id"]
    if to.null_count == len(to) or agent.null_count == len(agent):  # the usual batch: no kernel more
        return given
    sent = pc.and_kleene(pc.equal(filled["span_role"], _DELEGATION), pc.is_valid(to))
    return pc.coalesce(given, pc.if_else(sent, agent, _NULL_STRING))


def _with_fallback(name: str, derived: _AnyArray | None, given: dict[str, pa.ChunkedArray],
                   roles: _AnyArray, n: int) -> _AnyArray | None:
    """Columns with a rule for spans whose attributes do not say: task_success, error_type."""
    if name == "task_success":
        fallback: _AnyArray | None = _derived_task_success(given["status_code"], roles)
    elif name == "error_type":
        fallback = _exception_types(_single_array(given["events"]), n)
    else:
        return derived
    if derived is None or fallback is None:
        return fallback if derived is None else derived
    return pc.coalesce(derived, fallback)


def _keep_existing(existing: pa.ChunkedArray, derived: _AnyArray | None) -> _AnyArray:
    """A value set by an earlier stage wins over what normalisation derives."""
    if derived is None:
        return existing
    if existing.null_count == len(existing):
        return derived
    return pc.coalesce(existing, derived)
