"""Schema evolution of fusionrank's tables: what a later night may change.

A night that writes a table which already exists compares its columns with the
table's (from the Delta log, whichever engine wrote it):

* a column the table does not have yet is **added** (merged): it becomes nullable in
  the table and reads as null in the rows of earlier nights;
* a column whose type differs from the table's, or a column of the table that the
  night no longer writes, **fails** the write before anything is written, with a
  `SchemaEvolutionError` that names the table, the column and both types. Such a
  change needs a new table (or a deliberate migration), never a silent rewrite that
  consumers would trip over.

Nullability is not a type: a column may be written as non-nullable into a nullable
table and the other way round (the table keeps the looser of the two). A new table's
columns are all nullable, whichever engine creates it: delta-spark makes every column
of a DataFrame write nullable, and delta-rs follows so that both produce one schema.

Both engines follow the same rule: `TableStore` calls `evolve` before a write;
delta-rs commits the schema it returns, delta-spark writes with ``mergeSchema``
(safe once `evolve` has allowed only additions).
"""

from __future__ import annotations

import json

import pyarrow as pa

from fusionrank.storage import fs


class SchemaEvolutionError(RuntimeError):
    """A write would change a table's columns in a way the policy does not allow."""


def _strip_nullability(node):
    if isinstance(node, dict):
        return {k: _strip_nullability(v) for k, v in node.items()
                if k not in ("nullable", "containsNull", "valueContainsNull", "metadata")}
    if isinstance(node, list):
        return [_strip_nullability(v) for v in node]
    return node


def _type_text(field: dict) -> str:
    kind = field["type"]
    return kind if isinstance(kind, str) else json.dumps(_strip_nullability(kind), sort_keys=True)


def _as_nullable(node):
    """Delta schema JSON with every field, array element and map value nullable."""
    if isinstance(node, dict):
        out = {k: _as_nullable(v) for k, v in node.items()}
        for key in ("nullable", "containsNull", "valueContainsNull"):
            if key in out:
                out[key] = True
        return out
    if isinstance(node, list):
        return [_as_nullable(v) for v in node]
    return node


def evolve(table: str, table_path: str, incoming: pa.Schema):
    """The Delta schema (deltalake.schema.Schema) to commit when a write with columns
    `incoming` goes to table `table` at `table_path`; raises SchemaEvolutionError when
    the policy (module docstring) forbids the change. New columns come last."""
    from deltalake.schema import Schema as DeltaSchema

    new = _as_nullable(json.loads(DeltaSchema.from_arrow(incoming).to_json()))
    if not fs.is_delta_table(table_path):
        return DeltaSchema.from_json(json.dumps(new))
    current = json.loads(fs.delta_table(table_path).schema().to_json())
    new_fields = {f["name"]: f for f in new["fields"]}
    dropped = [f["name"] for f in current["fields"] if f["name"] not in new_fields]
    if dropped:
        raise SchemaEvolutionError(
            f"table {table}: the write has no column(s) {dropped} that the table at {table_path} has; "
            "dropping columns is not allowed (only new nullable columns are merged): "
            "write every column of the table, or write to a new table")
    merged = []
    for field in current["fields"]:
        other = new_fields[field["name"]]
        if _type_text(field) != _type_text(other):
            raise SchemaEvolutionError(
                f"table {table}: column {field['name']!r} is {_type_text(field)} in the table at {table_path} "
                f"but {_type_text(other)} in the write; changing a column's type is not allowed "
                "(only new nullable columns are merged)")
        merged.append(dict(field, nullable=bool(field.get("nullable", True) or other.get("nullable", True))))
    known = {f["name"] for f in current["fields"]}
    added = [f for f in new["fields"] if f["name"] not in known]
    return DeltaSchema.from_json(json.dumps({"type": "struct", "fields": merged + added}))

