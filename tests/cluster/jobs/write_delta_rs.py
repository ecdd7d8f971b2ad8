"""Cluster smoke job: Spark executors write Parquet files to the object store with
pyarrow, the driver commits exactly the reported files with delta-rs (deltalake).

    spark-submit --master spark://... write_delta_rs.py <endpoint> <bucket> <prefix> <rows>

Credentials come from the environment (AWS_ACCESS_KEY_ID, ...), on the executors too.
"""

import json
import os
import sys
import time

from pyspark.sql import SparkSession

REPORT = "path string, bytes long, rows long"


def write_files(batches, endpoint: str, bucket: str, prefix: str):
    import uuid

    import pyarrow as pa
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    fs = pafs.S3FileSystem(endpoint_override=endpoint, scheme="http", region=os.environ["AWS_REGION"],
                           force_virtual_addressing=False)
    for batch in batches:
        time.sleep(0.5)  # long enough for both executors to take tasks
        table = pa.Table.from_batches([batch])
        table = table.append_column("executor_dir", pa.array([os.getcwd()] * table.num_rows))
        name = f"part-{uuid.uuid4().hex}.parquet"
        pq.write_table(table, f"{bucket}/{prefix}/{name}", filesystem=fs)
        size = fs.get_file_info(f"{bucket}/{prefix}/{name}").size
        yield pa.RecordBatch.from_pydict({"path": [name], "bytes": [size], "rows": [table.num_rows]})


def main() -> None:
    from functools import partial

    import pyarrow as pa
    from deltalake.schema import Schema
    from deltalake.transaction import AddAction, create_table_with_add_actions

    endpoint, bucket, prefix, rows = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    spark = SparkSession.builder.appName("fusionrank-smoke-delta-rs").getOrCreate()
    frame = spark.range(0, rows, numPartitions=4).selectExpr("id", "cast(id * 2 as double) as value")
    files = frame.mapInArrow(partial(write_files, endpoint=endpoint, bucket=bucket, prefix=prefix), REPORT).collect()
    now = int(time.time() * 1000)
    actions = [AddAction(path=f.path, size=f.bytes, partition_values={}, modification_time=now, data_change=True,
                         stats=json.dumps({"numRecords": f.rows})) for f in files]
    schema = pa.schema([("id", pa.int64()), ("value", pa.float64()), ("executor_dir", pa.string())])
    options = {"AWS_ENDPOINT_URL": endpoint, "AWS_ALLOW_HTTP": "true", "AWS_S3_ALLOW_UNSAFE_RENAME": "true",
               "AWS_FORCE_PATH_STYLE": "true"}
    create_table_with_add_actions(f"s3://{bucket}/{prefix}", Schema.from_arrow(schema), actions, mode="error",
                                  storage_options=options)
    print(f"delta-rs committed {len(actions)} files ({sum(f.rows for f in files)} rows) to s3://{bucket}/{prefix}")
    spark.stop()


if __name__ == "__main__":
    main()
