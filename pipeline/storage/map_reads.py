"""One attribute of a span (``attributes['k']``) read straight from the stored list, in ad hoc SQL.

The store keeps each span's attribute maps as lists of (key, value) (``span_rows``: DuckDB ingests
them at twice the rate of MAPs) and presents them as MAPs through the view ``spans``.  Building the
MAP is what a query over many spans pays for (measured on 2M spans of 12 attributes: 4.3 s to group
by one attribute through ``map_from_entries``, 0.33 s reading the list with ``list_filter``), so a
query whose every use of an attribute map is a lookup of one key is run on ``spans_stored`` (the same
rows, the lists as stored) with each ``m['k']`` read as ``list_filter(m, lambda e: e.key = 'k')[1].value``
— the same value (keys are unique per span; a missing key is NULL either way) and the same column
names.  The rewrite works on DuckDB's own parse tree (``json_serialize_sql``) and is skipped, the query
then reading ``spans`` as written, whenever the query could mean anything else: another relation, a
CTE named ``spans``, ``*``, a map column used otherwise than by one constant key, or a name shadowing
one.  The SLI predicates do the same on the stored layout (``rollups._on_stored_layout``).
"""

from __future__ import annotations

import copy
import json

import duckdb

from agent_sre.pipeline.storage.rollups import _key_value, _quote

MAP_COLUMNS = ("attributes", "resource_attributes", "scope_attributes")
STORED_VIEW = "spans_stored"
_TEMPLATE_SQL = "SELECT " + _key_value("attributes", "'k'")


def stored_view_sql(source: str, temp: bool = False) -> str:
    """The view of the stored rows with their attribute lists as stored (the rewrite's target)."""
    return f"CREATE OR REPLACE {'TEMP ' if temp else ''}VIEW {STORED_VIEW} AS SELECT * FROM {source}"


def _tree(con: duckdb.DuckDBPyConnection, sql: str) -> dict:
    return json.loads(con.execute("SELECT json_serialize_sql(?::VARCHAR)", [sql]).fetchall()[0][0])


def _walk(node: object, parent: object = None, key: object = None):
    """(node, its container, its key in the container) for every dict of the tree."""
    stack = [(node, parent, key)]
    while stack:
        n, p, k = stack.pop()
        if isinstance(n, dict):
            yield n, p, k
            stack.extend((v, n, kk) for kk, v in n.items())
        elif isinstance(n, list):
            stack.extend((v, n, i) for i, v in enumerate(n))


def _is_map_ref(node: dict) -> bool:
    return node.get("class") == "COLUMN_REF" and str((node.get("column_names") or [""])[-1]).lower() in MAP_COLUMNS


def _lookup_key(node: dict) -> str | None:
    """The key of ``<map column>['key']`` (a constant string), else None."""
    children = node.get("children") or []
    if node.get("type") != "ARRAY_EXTRACT" or len(children) != 2 or not _is_map_ref(children[0]):
        return None
    const = children[1]
    literal = const.get("literal") or {}
    if const.get("class") != "CONSTANT" or literal.get("kind") != "STRING":
        return None
    return str(literal.get("text"))


def stored_reads(con: duckdb.DuckDBPyConnection, sql: str) -> str | None:
    """``sql`` (one SELECT) with its attribute lookups read from the stored lists, or None when it
    is not one the rewrite can take as it is meant (see the module docstring) or there is no
    ``spans_stored`` here (a file of an older version opened read-only)."""
    tree = _tree(con, sql)
    if tree.get("error") or len(tree.get("statements") or []) != 1:
        return None
    ctes = {str(e.get("key", "")).lower() for n, _, _ in _walk(tree) for e in (n.get("cte_map") or {}).get("map", [])}
    if "spans" in ctes:
        return None
    tables: list[dict] = []
    lookups: list[tuple[dict, object, object, str]] = []
    refs: list[dict] = []
    for node, parent, key in _walk(tree):
        kind = node.get("type")
        if kind == "BASE_TABLE":
            name = str(node.get("table_name", "")).lower()
            if node.get("schema_name") or node.get("catalog_name") or name not in ("spans", *ctes):
                return None
            if name == "spans":
                tables.append(node)
        elif kind == "TABLE_FUNCTION":
            return None
        elif kind in ("STAR", "COLUMNS") or node.get("class") == "STAR":
            if not (isinstance(parent, dict) and "null_order" in parent):  # ORDER BY ALL is harmless
                return None
        if str(node.get("alias") or "").lower() in MAP_COLUMNS:
            return None  # a name that would shadow a map column
        if node.get("class") == "LAMBDA" and _is_map_ref(node.get("lhs") or {}):
            return None
        if _is_map_ref(node):
            if len(node.get("column_names") or []) > 2:
                return None
            refs.append(node)
        lookup = _lookup_key(node)
        if lookup is not None:
            lookups.append((node, parent, key, lookup))
    # Every use of a map column must be a lookup of one key, and there must be one at least.
    if not tables or not lookups or {id(r) for r in refs} != {id(n["children"][0]) for n, _, _, _ in lookups}:
        return None
    if not con.execute("SELECT count(*) FROM duckdb_views() WHERE view_name = ?", [STORED_VIEW]).fetchall()[0][0]:
        return None
    template = _template(con)
    select_lists = [n.get("select_list") for n, _, _ in _walk(tree) if isinstance(n.get("select_list"), list)]
    for node, parent, key, lookup in lookups:
        ref = node["children"][0]
        new = copy.deepcopy(template)
        for sub, _, _ in _walk(new):
            if sub.get("class") == "COLUMN_REF" and sub.get("column_names") == ["attributes"]:
                sub["column_names"] = ref["column_names"]
            elif (sub.get("literal") or {}).get("text") == "k":
                sub["literal"]["text"] = lookup
        alias = node.get("alias") or ""
        if not alias and any(parent is sl for sl in select_lists):
            alias = f"{'.'.join(ref['column_names'])}[{_quote(lookup)}]"  # the column's name as written
        new["alias"] = alias
        parent[key] = new  # type: ignore[index]
    for table in tables:
        table["table_name"] = STORED_VIEW
        table["qualified_name"] = {"path": [STORED_VIEW]}
        table["alias"] = table.get("alias") or "spans"
    return con.execute("SELECT json_deserialize_sql(?::JSON)", [json.dumps(tree)]).fetchall()[0][0]


def _template(con: duckdb.DuckDBPyConnection) -> dict:
    return _tree(con, _TEMPLATE_SQL)["statements"][0]["node"]["select_list"][0]
