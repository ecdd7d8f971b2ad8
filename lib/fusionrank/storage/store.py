"""The one module that reads and writes fusionrank's tables, all Delta Lake.

Two engines produce the same tables:

* ``delta-spark`` (the Delta jars on the classpath): ``format("delta")`` with
  ``replaceWhere`` for one run date.
* ``delta-rs`` (no jars, e.g. local runs and CI that cannot reach Maven): Spark
  writes the Parquet files in parallel into a fresh folder inside the table, then
  the driver commits them to the Delta log with ``deltalake``'s
  ``create_write_transaction``; the overwrite is scoped to the partitions being
  replaced. Until that commit no reader sees the new files, and a write that fails
  leaves the last committed version as it was.

A write killed before its commit leaves an uncommitted ``part-*`` folder that no
reader sees (reads go through the log). The table's next successful write removes
such folders once no Delta log entry references them and nothing in them changed
for ``storage.orphan_grace_hours`` (so a concurrent write in flight is never
touched).

Test hook: the environment variable ``FUSIONRANK_FAULT_BEFORE_COMMIT`` set to
``<table>:raise`` or ``<table>:hang`` makes the delta-rs write of that table stop
after its Parquet files are written and before the commit, by raising or by
sleeping until the process is killed. The crash tests use it to interrupt a write at
its most delicate moment; it is never set in production.

Large outputs made as Arrow batches on the executors (the ranking stage's millions
of recommendations) can skip Spark rows altogether: `ExecutorBatches` has each task
write its batches to Parquet with pyarrow and report the file; the driver commits
exactly the reported files (a failed task attempt's leftovers are never
committed), in the same commit as any rows written by Spark beside them.

Nothing else in fusionrank knows which engine wrote a table.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import time
import uuid
from dataclasses import dataclass
from functools import partial
from typing import Callable, Iterator
from urllib.parse import quote, unquote, urlparse

import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.pandas.types import from_arrow_schema, to_arrow_schema

from fusionrank.core import uri as uris
from fusionrank.core.config import Settings
from fusionrank.core.errors import StorageError
from fusionrank.core.spark import delta_spark_available
from fusionrank.storage import fs
from fusionrank.storage.table_schema import SchemaEvolutionError, evolve  # noqa: F401 (re-exported for callers)

log = logging.getLogger(__name__)

_PARTITION_SEGMENT = re.compile(r"^([^=/]+)=(.*)$")
# The folder one delta-rs write puts its files in (see `_write_delta_rs`).
_WRITE_DIR = re.compile(r"^part-\d{8}T\d{6}-[0-9a-f]{8}$")
FAULT_ENV = "FUSIONRANK_FAULT_BEFORE_COMMIT"



@dataclass(frozen=True)
class TableInfo:
    name: str
    path: str
    version: int
    rows: int | None
    partitions: list[str]
    last_commit: str | None


@dataclass(frozen=True)
class ExecutorBatches:
    """Rows produced on the executors as Arrow batches: `frame.mapInArrow(produce)`
    with `schema` (a table's columns but its partition columns)."""

    frame: DataFrame
    produce: Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]
    schema: T.StructType
    # A column whose values never repeat across produced batches (e.g. the user of a
    # ranked list): the files' reports then count its distinct values, no re-read needed.
    distinct: str | None = None
    # Columns to dictionary-encode in the Parquet files (None: all, pyarrow's default):
    # naming only the low-cardinality ones saves hashing millions of unique strings.
    dictionary_columns: tuple[str, ...] | None = None
    # Columns whose min/max statistics the Parquet footers keep (None: all, pyarrow's
    # default): statistics of columns no reader prunes on (ids spread over every row
    # group, scores, texts) only cost writer time. Delta's own stats are in the log.
    statistics_columns: tuple[str, ...] | None = None

    def to_dataframe(self) -> DataFrame:
        return self.frame.mapInArrow(partial(plain_batches, produce=self.produce), self.schema)


def plain_batches(batches: Iterator[pa.RecordBatch], produce) -> Iterator[pa.RecordBatch]:
    """`produce` with dictionary columns decoded (Spark rows want the plain types)."""
    for batch in produce(batches):
        yield pa.RecordBatch.from_arrays(
            [c.dictionary_decode() if pa.types.is_dictionary(c.type) else c for c in batch.columns],
            names=batch.schema.names)


def _count_distinct(column: pa.Array) -> int:
    if pa.types.is_dictionary(column.type):  # the distinct values its rows use
        column = column.dictionary.take(pc.drop_null(pc.unique(column.indices)))
    return pc.count_distinct(column).as_py()


def _file_table(pending: list[pa.RecordBatch], schema: pa.Schema, dictionary_columns) -> pa.Table:
    """The batches as one table of `schema`, where `dictionary_columns` stay (or become)
    dictionary arrays with one dictionary per column: the Parquet writer then writes
    that dictionary as it is instead of hashing every value."""
    if not dictionary_columns:
        return pa.Table.from_batches(pending).cast(schema)
    target = pa.schema([pa.field(f.name, pa.dictionary(pa.int32(), f.type), f.nullable)
                        if f.name in dictionary_columns else f for f in schema])
    converted = []
    for batch in pending:
        columns = []
        for field, column in zip(target, batch.select(target.names).columns):
            if pa.types.is_dictionary(field.type):
                if not pa.types.is_dictionary(column.type):
                    column = pc.dictionary_encode(column.cast(field.type.value_type))
                column = pa.DictionaryArray.from_arrays(column.indices.cast(pa.int32()),
                                                        column.dictionary.cast(field.type.value_type))
            else:
                column = column.cast(field.type)
            columns.append(column)
        converted.append(pa.RecordBatch.from_arrays(columns, schema=target))
    return pa.Table.from_batches(converted, schema=target).unify_dictionaries().combine_chunks()


FILE_REPORT_DDL = "path string, rows long, bytes long, distinct long"
ROW_GROUP_ROWS = 256 * 1024


def write_batches_partition(batches: Iterator[pa.RecordBatch], produce, folder: str,
                            schema: pa.Schema, distinct: str | None = None,
                            dictionary_columns: tuple[str, ...] | None = None,
                            statistics_columns: tuple[str, ...] | None = None) -> Iterator[pa.RecordBatch]:
    """mapInArrow body: this task's produced batches -> one Parquet file in `folder`
    (any URI, written through the fs layer; none when it produced no rows); yields
    (path, rows, bytes, distinct) of the file."""
    import pyarrow.parquet as pq
    from pyspark import TaskContext

    task = TaskContext.get()
    name = f"part-{task.partitionId() if task else 0:05d}-{uuid.uuid4().hex}.parquet"  # unique per attempt
    path = uris.join(folder, name)
    writer, rows, pending, keys = None, 0, [], 0

    def flush():
        nonlocal writer
        table = _file_table(pending, schema, dictionary_columns)
        if writer is None:
            fs.makedirs(folder)
            filesystem, inner = fs.filesystem(path)
            # No stored Arrow schema: readers see the table's plain types, not dictionaries.
            writer = pq.ParquetWriter(inner, table.schema, filesystem=filesystem,
                                      use_dictionary=True if dictionary_columns is None else list(dictionary_columns),
                                      store_schema=not dictionary_columns,
                                      write_statistics=True if statistics_columns is None else list(statistics_columns))
        writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
        pending.clear()

    try:
        for batch in produce(batches):
            if batch.num_rows:
                pending.append(batch)
                rows += batch.num_rows
                if distinct:
                    keys += _count_distinct(batch.column(distinct))
                if sum(b.num_rows for b in pending) >= ROW_GROUP_ROWS:
                    flush()
        if pending:
            flush()
    finally:
        if writer is not None:
            writer.close()
    if writer is not None:
        yield pa.RecordBatch.from_pydict({"path": [path], "rows": [rows], "bytes": [fs.size(path)],
                                          "distinct": [keys if distinct else None]},
                                         schema=pa.schema([("path", pa.string()), ("rows", pa.int64()),
                                                           ("bytes", pa.int64()), ("distinct", pa.int64())]))


def _local_path(uri: str) -> str:
    parsed = urlparse(uri)
    return unquote(parsed.path) if parsed.scheme in ("", "file") else uri


def _in_table(uri: str, table_path: str) -> str:
    """A file URI that deltalake reports (local path, file:// or s3://), as the table
    path spells it (so `s3a://` tables keep `s3a://` files for Spark)."""
    return uris.join(table_path, fs.relative(_local_path(uri), table_path))


def _format_value(value: object) -> str:
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    return str(value)


class TableStore:
    """Reads and writes the tables named in `settings.storage.tables`."""

    def __init__(self, spark: SparkSession, settings: Settings):
        self.spark = spark
        self.settings = settings
        engine = settings.storage.engine
        if engine == "auto":
            engine = "delta-spark" if delta_spark_available(spark) else "delta-rs"
        elif engine == "delta-spark" and not delta_spark_available(spark):
            raise StorageError(
                "storage.engine is 'delta-spark' but the Delta classes are not on the Spark "
                "classpath: run `make jars` (fusionrank.core.jars caches them) before the session starts, "
                "add --packages io.delta:delta-spark_2.13:<version> to spark-submit, "
                "or set storage.engine: auto"
            )
        self.engine = engine
        self.last_write: dict = {}  # what the last executor-batches write reported (rows, distinct)

    # -- paths -----------------------------------------------------------------
    def path(self, name: str) -> str:
        return self.settings.storage.table_path(name)

    def exists(self, name: str) -> bool:
        return fs.is_delta_table(self.path(name))

    # -- writing ---------------------------------------------------------------
    def write(
        self,
        df: DataFrame | None,
        name: str,
        partition_by: list[str] | None = None,
        replace: dict[str, object] | None = None,
        commit_info: dict[str, str] | None = None,
        batches: ExecutorBatches | None = None,
        schema: T.StructType | None = None,
    ) -> int:
        """Write `df` as table `name` in one commit and return the new version.

        `replace` maps partition columns to the values being replaced (for example
        ``{"run_date": date}``): rows of other partitions stay untouched. Without it
        the whole table is replaced. The columns named in `replace` are set to those
        values, so a write can never leak into another partition.

        `batches` adds rows that the executors write to Parquet themselves (see
        `ExecutorBatches`); then `replace` must name every partition column, and
        `schema` (the table's) is required when there is no `df`.
        """
        partition_by = list(partition_by or [])
        replace = {k: _format_value(v) for k, v in (replace or {}).items()}
        missing = [c for c in replace if c not in partition_by]
        if missing:
            raise StorageError(f"table {name}: replace keys {missing} must be partition columns {partition_by}")
        if df is None and (batches is None or schema is None):
            raise StorageError(f"table {name}: nothing to write (no DataFrame, or executor batches without a schema)")
        if batches is not None and set(replace) != set(partition_by):
            raise StorageError(f"table {name}: executor-written rows need every partition column {partition_by} "
                               f"fixed by replace (got {sorted(replace)})")
        schema = schema or df.schema
        if df is not None:
            for column, value in replace.items():
                data_type = df.schema[column].dataType if column in df.columns else T.StringType()
                df = df.withColumn(column, F.lit(value).cast(data_type))
            absent = [c for c in partition_by if c not in df.columns]
            if absent:
                raise StorageError(f"table {name}: partition columns {absent} are not in the data ({df.columns})")
        if batches is not None:
            expected = [f.name for f in schema.fields if f.name not in partition_by]
            if batches.schema.fieldNames() != expected:
                raise StorageError(f"table {name}: executor batches have columns {batches.schema.fieldNames()}, "
                                   f"expected {expected}")
        evolve(name, self.path(name), to_arrow_schema(schema, timezone="UTC"))  # the schema policy, both engines
        if self.engine == "delta-spark":
            return self._write_delta_spark_with(df, name, partition_by, replace, commit_info, batches, schema)
        return self._write_delta_rs(df, name, partition_by, replace, commit_info, batches, schema)

    def write_rows(self, rows: pa.Table, name: str, schema: T.StructType, partition_by: list[str] | None = None,
                   replace: dict[str, object] | None = None, commit_info: dict[str, str] | None = None) -> int:
        """Write a small table held by the driver (`rows`: the table's columns but those
        fixed by `replace`) without a Spark job: one Parquet file, one commit."""
        partition_by = list(partition_by or [])
        fixed = {k: _format_value(v) for k, v in (replace or {}).items()}
        if set(fixed) != set(partition_by):
            raise StorageError(f"table {name}: driver rows need every partition column {partition_by} fixed by replace")
        file_schema = to_arrow_schema(T.StructType([f for f in schema.fields if f.name not in partition_by]),
                                      timezone="UTC")
        rows = rows.select(file_schema.names).cast(file_schema)
        evolve(name, self.path(name), to_arrow_schema(schema, timezone="UTC"))  # the schema policy, both engines
        if self.engine == "delta-spark":
            frame = self.spark.createDataFrame(rows.to_pandas(), T.StructType(
                [f for f in schema.fields if f.name not in partition_by]))
            for column, value in fixed.items():
                frame = frame.withColumn(column, F.lit(value).cast(schema[column].dataType))
            return self._write_delta_spark(frame.select(*schema.fieldNames()), name, partition_by, fixed, commit_info)
        return self._write_delta_rs(None, name, partition_by, fixed, commit_info, schema=schema, driver_rows=rows)

    def _write_batches(self, batches: ExecutorBatches, folder: str) -> list[dict]:
        """Run `batches` with each task writing its Parquet file into `folder`; the files' reports."""
        from functools import partial

        body = partial(write_batches_partition, produce=batches.produce, folder=folder,
                       schema=to_arrow_schema(batches.schema, timezone="UTC"), distinct=batches.distinct,
                       dictionary_columns=batches.dictionary_columns, statistics_columns=batches.statistics_columns)
        files = [row.asDict() for row in batches.frame.mapInArrow(body, FILE_REPORT_DDL).collect()]
        self.last_write = {"rows": sum(f["rows"] for f in files),
                           "distinct": sum(f["distinct"] for f in files) if batches.distinct else None}
        return files

    def _write_delta_spark_with(self, df, name, partition_by, replace, commit_info, batches, schema) -> int:
        """delta-spark cannot commit foreign files: executor files are staged, read back
        by Spark and written as Delta with the rest."""
        if batches is None:
            return self._write_delta_spark(df, name, partition_by, replace, commit_info)
        # Staged beside the table, on its filesystem (object stores too, through fs).
        staging = uris.join(self.path(name) + "_staging", uuid.uuid4().hex)
        try:
            files = self._write_batches(batches, staging)
            data = None
            if files:
                data = self.spark.read.schema(batches.schema).parquet(*[uris.spark_uri(f["path"]) for f in files])
                for column, value in replace.items():
                    data = data.withColumn(column, F.lit(value).cast(schema[column].dataType))
                data = data.select(*schema.fieldNames())
            if df is not None:
                df = df.select(*schema.fieldNames())
                data = df if data is None else data.unionByName(df)
            if data is None:
                data = self.spark.createDataFrame([], schema)
            return self._write_delta_spark(data, name, partition_by, replace, commit_info)
        finally:
            fs.delete(staging)

    def _write_delta_spark(self, df, name, partition_by, replace, commit_info) -> int:
        # New columns merge (evolve() has already refused any other schema change).
        writer = df.write.format("delta").mode("overwrite").option("mergeSchema", "true")
        if partition_by:
            writer = writer.partitionBy(*partition_by)
        if replace and self.exists(name):
            predicate = " AND ".join(f"`{c}` = '{v}'" for c, v in replace.items())
            writer = writer.option("replaceWhere", predicate)
        if commit_info:
            writer = writer.option("userMetadata", json.dumps(commit_info, sort_keys=True))
        writer.save(uris.spark_uri(self.path(name)))
        return self._version(name)

    def _write_delta_rs(self, df, name, partition_by, replace, commit_info, batches=None, schema=None,
                        driver_rows: pa.Table | None = None) -> int:
        from deltalake import CommitProperties
        from deltalake.transaction import AddAction, create_table_with_add_actions

        table_path = self.path(name)
        write_dir = "part-" + dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]
        staging = uris.join(table_path, write_dir)
        arrow_schema = to_arrow_schema(schema if schema is not None else df.schema, timezone="UTC")
        # Where rows of the one replaced partition go (executor files, driver rows).
        folder = uris.join(staging, *[f"{c}={quote(replace.get(c, ''), safe='')}" for c in partition_by])
        try:
            actions = []
            if batches is not None:
                # Executor files go to the partition folder; Spark's (if any) to a subfolder.
                files = self._write_batches(batches, folder)
                actions += self._file_actions(table_path, files, {c: replace[c] for c in partition_by}, AddAction)
            if driver_rows is not None and driver_rows.num_rows:
                import pyarrow.parquet as pq

                fs.makedirs(folder)
                path = uris.join(folder, f"part-00000-{uuid.uuid4().hex}.parquet")
                filesystem, inner = fs.filesystem(path)
                pq.write_table(driver_rows, inner, filesystem=filesystem)
                files = [{"path": path, "rows": driver_rows.num_rows, "bytes": fs.size(path)}]
                actions += self._file_actions(table_path, files, {c: replace[c] for c in partition_by}, AddAction)
            if df is not None:
                spark_dir = write_dir if batches is None else f"{write_dir}/spark"
                if schema is not None:  # the table's types, as the executor files have them
                    df = df.select(*[F.col(f.name).cast(f.dataType) for f in schema.fields])
                writer = df.select(*arrow_schema.names).write.mode("errorifexists")
                if partition_by:
                    writer = writer.partitionBy(*partition_by)
                writer.parquet(uris.spark_uri(uris.join(table_path, spark_dir)))
                actions += self._add_actions(table_path, spark_dir, partition_by, AddAction)
            _fault_point(name)
            properties = CommitProperties(custom_metadata=dict(commit_info or {}))
            delta_schema = evolve(name, table_path, arrow_schema)  # the table's columns plus new ones
            if fs.is_delta_table(table_path):
                table = fs.delta_table(table_path)
                filters = [(c, "=", v) for c, v in replace.items()] or None
                table.create_write_transaction(
                    actions,
                    mode="overwrite",
                    schema=delta_schema,
                    partition_by=partition_by or None,
                    partition_filters=filters,
                    commit_properties=properties,
                )
            else:
                create_table_with_add_actions(
                    uris.arrow_uri(table_path),
                    delta_schema,
                    actions,
                    mode="error",
                    partition_by=partition_by or None,
                    name=name,
                    storage_options=uris.delta_storage_options(table_path),
                    commit_properties=properties,
                )
        except Exception:
            # The commit never happened: nothing references these files; drop them.
            fs.delete(staging)
            raise
        removed = remove_stale_writes(table_path, self.settings.storage.orphan_grace_hours * 3600, keep=write_dir)
        if removed:
            log.info("table %s: removed %d uncommitted folder(s) of interrupted writes: %s", name, len(removed), removed)
        return self._version(name)

    @staticmethod
    def _file_actions(table_path: str, files: list[dict], values: dict[str, str], action_cls) -> list:
        return [
            action_cls(
                path=fs.relative(f["path"], table_path),
                size=int(f["bytes"]),
                partition_values=dict(values),
                modification_time=int(fs.mtime(f["path"]) * 1000),
                data_change=True,
                stats=json.dumps({"numRecords": int(f["rows"])}),
            )
            for f in sorted(files, key=lambda f: f["path"])
        ]

    def _add_actions(self, table_path: str, write_dir: str, partition_by: list[str], action_cls) -> list:
        import pyarrow.parquet as pq

        actions = []
        root = uris.join(table_path, write_dir)
        # Sorted by folder, then file name (as os.walk gave them before the fs layer).
        entries = sorted(fs.list_files(root), key=lambda e: (e.path.rsplit("/", 1)[0] if "/" in e.path else "",
                                                              e.path.rsplit("/", 1)[-1]))
        for entry in entries:
            if not entry.path.endswith(".parquet") or entry.path.rsplit("/", 1)[-1].startswith((".", "_")):
                continue  # _SUCCESS and checksum files
            full = uris.join(root, entry.path)
            rel = f"{write_dir}/{entry.path}"
            values: dict[str, str | None] = {}
            for segment in rel.split("/")[1:-1]:
                match = _PARTITION_SEGMENT.match(segment)
                if match:
                    value = unquote(match.group(2))
                    values[match.group(1)] = None if value == "__HIVE_DEFAULT_PARTITION__" else value
            if set(values) != set(partition_by):
                raise StorageError(f"file {full}: partition folders {values} do not match {partition_by}")
            filesystem, inner = fs.filesystem(full)
            rows = pq.read_metadata(inner, filesystem=filesystem).num_rows
            actions.append(
                action_cls(
                    path=rel,
                    size=entry.size,
                    partition_values=values,
                    modification_time=int(entry.mtime * 1000),
                    data_change=True,
                    stats=json.dumps({"numRecords": rows}),
                )
            )
        return actions

    # -- reading ---------------------------------------------------------------
    def read(self, name: str, where: dict[str, object] | None = None, version: int | None = None) -> DataFrame:
        """Read table `name` (optionally one version, optionally pruned to partitions)."""
        if not self.exists(name):
            raise StorageError(f"table {name} does not exist at {self.path(name)}: run the stage that writes it first")
        return read_delta_path(self.spark, self.path(name), self.engine, where, version)

    # -- metadata --------------------------------------------------------------
    def _version(self, name: str) -> int:
        return fs.delta_table(self.path(name)).version()

    def partition_values(self, name: str, column: str) -> list[str]:
        """Distinct values of a partition column in the current version (from the log)."""
        return partition_values(self.path(name), column) or []

    def count_rows(self, name: str, where: dict[str, object] | None = None) -> int | None:
        """Row count from the Delta log's file statistics (no data is read)."""
        if not self.exists(name):
            return None
        actions = pa.table(fs.delta_table(self.path(name)).get_add_actions(flatten=True))
        if "num_records" not in actions.column_names:
            return None
        keep = [True] * actions.num_rows
        for column, value in (where or {}).items():
            values = actions.column(f"partition.{column}").to_pylist()
            keep = [k and _format_value(v) == _format_value(value) for k, v in zip(keep, values)]
        counts = [c for c, k in zip(actions.column("num_records").to_pylist(), keep) if k]
        return None if any(c is None for c in counts) else int(sum(counts))

    def latest_partition(self, name: str, column: str, at_most: str | None = None) -> str | None:
        values = [v for v in self.partition_values(name, column) if at_most is None or v <= at_most]
        return values[-1] if values else None

    def info(self, name: str) -> TableInfo:
        table = fs.delta_table(self.path(name))
        actions = pa.table(table.get_add_actions(flatten=True))
        rows = None
        if "num_records" in actions.column_names:
            counts = actions.column("num_records").to_pylist()
            rows = None if any(c is None for c in counts) else int(sum(counts))
        history = table.history(1)
        last = history[0].get("timestamp") if history else None
        last_commit = (
            dt.datetime.fromtimestamp(last / 1000, dt.timezone.utc).isoformat(timespec="seconds") if last else None
        )
        partitions = list(table.metadata().partition_columns)
        return TableInfo(name, self.path(name), table.version(), rows, partitions, last_commit)


def _fault_point(table: str) -> None:
    """The documented test hook (module docstring): stop before the commit."""
    spec = os.environ.get(FAULT_ENV, "")
    target, _, action = spec.partition(":")
    if not spec or target != table:
        return
    if action == "hang":
        log.warning("%s=%s: holding the write of %s before its commit", FAULT_ENV, spec, table)
        while True:
            time.sleep(1)
    raise StorageError(f"{FAULT_ENV}={spec}: write of {table} interrupted before its commit")


def referenced_write_dirs(table_path: str) -> set[str]:
    """Top-level folders of every file a version of the table still refers to: the
    current files plus every add/remove in the JSON commits kept (time travel)."""
    def top(path: str) -> str:
        return unquote(path).replace(os.sep, "/").split("/")[0]

    dirs = {top(fs.relative(_local_path(uri), table_path)) for uri in fs.delta_table(table_path).file_uris()}
    log_dir = uris.join(table_path, "_delta_log")
    for entry in fs.listdir(log_dir):
        if not entry.endswith(".json"):
            continue
        for line in fs.read_text(uris.join(log_dir, entry)).splitlines():
            if not line.strip():
                continue
            action = json.loads(line)
            for kind in ("add", "remove"):
                if kind in action:
                    dirs.add(top(action[kind]["path"]))
    return dirs


def _last_touched(folder: str) -> float:
    """The newest modification inside `folder` (object stores: of its files; a local
    folder's own time counts too)."""
    newest = os.stat(_local_path(folder)).st_mtime if uris.is_local(folder) else 0.0
    for entry in fs.list_files(folder):
        newest = max(newest, entry.mtime)
    if uris.is_local(folder):  # sub-folders' own times (a write creating its folders)
        for root, subdirs, _ in os.walk(_local_path(folder)):
            for sub in subdirs:
                try:
                    newest = max(newest, os.stat(os.path.join(root, sub)).st_mtime)
                except FileNotFoundError:
                    pass
    return newest


def remove_stale_writes(table_path: str, grace_seconds: float, keep: str | None = None) -> list[str]:
    """Remove the `part-*` folders of interrupted delta-rs writes: referenced by no
    Delta log entry and untouched for `grace_seconds`. Returns the folder names."""
    candidates = [
        entry for entry in fs.listdir(table_path)
        if entry != keep and _WRITE_DIR.match(entry) and fs.is_dir(uris.join(table_path, entry))
    ]
    if not candidates:
        return []
    referenced = referenced_write_dirs(table_path)
    cutoff = time.time() - grace_seconds
    removed = []
    for entry in sorted(candidates):
        folder = uris.join(table_path, entry)
        if entry in referenced or _last_touched(folder) > cutoff:
            continue
        fs.delete(folder)
        removed.append(entry)
    return removed


def partition_values(table_path: str, column: str) -> list[str] | None:
    """Distinct values of a partition column, from the Delta log alone (no Spark).

    None when there is no Delta table at `table_path`; empty when the table is not
    partitioned by `column`.
    """
    if not fs.is_delta_table(table_path):
        return None
    actions = pa.table(fs.delta_table(table_path).get_add_actions(flatten=True))
    key = f"partition.{column}"
    if key not in actions.column_names:
        return []
    return sorted({_format_value(v) for v in actions.column(key).to_pylist() if v is not None})


def read_delta_path(
    spark: SparkSession,
    table_path: str,
    engine: str,
    where: dict[str, object] | None = None,
    version: int | None = None,
) -> DataFrame:
    """Read the Delta table at `table_path` with the given engine."""
    where = {k: _format_value(v) for k, v in (where or {}).items()}
    if engine == "delta-spark":
        reader = spark.read.format("delta")
        if version is not None:
            reader = reader.option("versionAsOf", version)
        df = reader.load(uris.spark_uri(table_path))
        for column, value in where.items():
            df = df.where(F.col(column).cast("string") == value)
        return df
    table = fs.delta_table(table_path, version=version)
    partition_by = list(table.metadata().partition_columns)
    schema = from_arrow_schema(pa.schema(table.schema().to_arrow()))
    unknown = [c for c in where if c not in partition_by]
    if unknown:
        raise StorageError(f"table {table_path}: can only prune on partition columns {partition_by}, not {unknown}")
    filters = [(c, "=", v) for c, v in where.items()] or None
    files = [_in_table(uri, table_path) for uri in table.file_uris(file_pruning_predicate=filters)]
    if not files:
        return spark.createDataFrame([], schema)
    # Files written in one Spark write share a base folder that holds `col=value`
    # sub-folders; Spark reads the partition values back from those paths.
    groups: dict[str, list[str]] = {}
    for path in files:
        rel = fs.relative(path, table_path).split("/")
        cut = len(rel) - 1
        for i, segment in enumerate(rel[:-1]):
            match = _PARTITION_SEGMENT.match(segment)
            if match and match.group(1) in partition_by:
                cut = i
                break
        base = uris.join(table_path, *rel[:cut]) if cut else table_path
        groups.setdefault(uris.spark_uri(base), []).append(uris.spark_uri(path))
    frames = [
        spark.read.schema(schema).option("basePath", base).parquet(*paths)
        for base, paths in sorted(groups.items())
    ]
    df = frames[0]
    for frame in frames[1:]:
        df = df.unionByName(frame)
    return df.select(*schema.fieldNames())
