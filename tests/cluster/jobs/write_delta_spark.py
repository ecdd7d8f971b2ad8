"""Cluster smoke job: Spark executors make rows, delta-spark writes them as a Delta table.

    spark-submit --master spark://... write_delta_spark.py <table uri (s3a://...)> <rows>

Each row records the work folder of the executor that made it (a worker's folder).
"""

import sys

from pyspark.sql import SparkSession


def tag(batches):
    import os
    import time

    for batch in batches:
        time.sleep(0.5)  # long enough for both executors to take tasks
        yield batch.assign(executor_dir=os.getcwd())


def main() -> None:
    table, rows = sys.argv[1], int(sys.argv[2])
    spark = SparkSession.builder.appName("fusionrank-smoke-delta-spark").getOrCreate()
    frame = spark.range(0, rows, numPartitions=4).selectExpr("id", "cast(id % 3 as string) as part")
    frame = frame.mapInPandas(tag, "id long, part string, executor_dir string")
    frame.write.format("delta").partitionBy("part").mode("overwrite").save(table)
    back = spark.read.format("delta").load(table).count()
    print(f"delta-spark wrote {back} rows to {table}")
    spark.stop()


if __name__ == "__main__":
    main()
