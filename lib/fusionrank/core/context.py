"""RunContext: what a stage gets. The settings, the Spark session, the table store,
the run date and the run's ModelSpec (resolved once, on first use), and the shared
reads every stage must agree on (what "training" and "held out" mean)."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass, field
from functools import cached_property

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from fusionrank.core import privacy
from fusionrank.core.catalog import TABLES, Layout, layout, replace_for
from fusionrank.core.config import Settings
from fusionrank.core.errors import StageError
from fusionrank.core.spark import get_session, utc_literal
from fusionrank.storage.store import TableStore
from fusionrank.vectors import spec as model_spec


@dataclass
class RunContext:
    settings: Settings
    spark: SparkSession
    store: TableStore
    run_date: dt.date
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    @cached_property
    def spec(self) -> model_spec.ModelSpec:
        """The run's vector space, resolved once (model folders are read here)."""
        return model_spec.resolve(self.settings)

    @property
    def layout(self) -> Layout:
        return layout(self.settings)

    @property
    def run_end(self) -> dt.datetime:
        """First instant after the run date (UTC): nothing later belongs to this run."""
        day = self.run_date + dt.timedelta(days=1)
        return dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc)

    @property
    def holdout_start(self) -> dt.datetime:
        """Events from here to `run_end` are held out for evaluation."""
        return self.run_end - dt.timedelta(days=self.settings.evaluate.holdout_days)

    def commit_info(self, stage: str, **extra: str) -> dict[str, str]:
        return {"fusionrank.stage": stage, "fusionrank.run_date": str(self.run_date), "fusionrank.run_id": self.run_id,
                **extra}

    def describe(self, stage: str) -> None:
        # Names the work in the Spark UI instead of "mapInPandas at ...".
        self.spark.sparkContext.setJobGroup(f"fusionrank:{stage}", f"fusionrank:{stage} {self.run_date}", True)

    # Shared reads, so every stage agrees on what "training" means.
    def events(self) -> DataFrame:
        return self.store.read("events_clean")

    def training_events(self) -> DataFrame:
        return self.events().where(F.col("event_ts") < utc_literal(self.holdout_start))

    def holdout_events(self) -> DataFrame:
        events = self.events()
        return events.where(
            (F.col("event_ts") >= utc_literal(self.holdout_start)) & (F.col("event_ts") < utc_literal(self.run_end))
        )

    def has_date(self, table: str) -> bool:
        return self.store.exists(table) and str(self.run_date) in self.store.partition_values(table, "run_date")

    def for_date(self, table: str) -> DataFrame:
        if not self.store.exists(table):
            raise StageError(f"table {table} does not exist yet: run the stage that writes it for {self.run_date} first")
        if not self.has_date(table):
            raise StageError(f"table {table} has no rows for run_date {self.run_date}: run its stage for that date first")
        return self.store.read(table, where={"run_date": self.run_date})

    def write(self, table: str, df: DataFrame | None, stage: str, commit_extra: dict | None = None, **kwargs):
        """Write `table` as the catalog lays it out: a dated table replaces exactly this
        run date's partition (kwargs `partition_values` add e.g. the quarantine's stage)."""
        spec = TABLES[table]
        values = kwargs.pop("partition_values", {})
        if df is not None and spec.dated and "run_date" not in df.columns:
            df = df.withColumn("run_date", F.lit(self.run_date))
        return self.store.write(df, table, partition_by=list(spec.partition_by),
                                replace=replace_for(table, self.run_date, **values) or None,
                                commit_info=self.commit_info(stage, **(commit_extra or {})), **kwargs)

    def write_rows(self, table: str, rows, stage: str):
        """A small driver-held dated table (pyarrow rows), written without a Spark job."""
        spec = TABLES[table]
        return self.store.write_rows(rows, table, spec.schema, partition_by=list(spec.partition_by),
                                     replace=replace_for(table, self.run_date), commit_info=self.commit_info(stage))

    def index_path(self) -> str:
        return str(self.layout.index(self.run_date))

    def pseudonymised(self, df: DataFrame) -> DataFrame:
        """`df` with user ids as they leave the system (`privacy.pseudonymise_user_ids`)."""
        return privacy.pseudonymise_users(df, privacy.user_salt(self.settings))


def make_context(settings: Settings, run_date: dt.date, spark: SparkSession | None = None,
                 stage: str | None = None) -> RunContext:
    """`stage`: the one stage the context serves, whose Spark conf a new session gets."""
    spark = spark or get_session(settings, stage)
    return RunContext(settings, spark, TableStore(spark, settings), run_date)
