"""spark-submit entry point: fusionrank stage `evaluate` (lib/fusionrank/metrics/stage.py).

    spark-submit --py-files dist/fusionrank.zip jobs/evaluate.py --conf conf/cluster.yaml --date YYYY-MM-DD
"""

import sys

from fusionrank.metrics.stage import evaluate
from fusionrank.pipeline.runner import job_main

if __name__ == "__main__":
    sys.exit(job_main(evaluate))
