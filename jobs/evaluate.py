"""spark-submit entry point: fusionrank stage `evaluate`.

    spark-submit --py-files dist/fusionrank.zip jobs/evaluate.py --conf conf/cluster.yaml --date YYYY-MM-DD
"""

import sys

from fusionrank.interfaces.cli import job_main

if __name__ == "__main__":
    sys.exit(job_main("evaluate"))
