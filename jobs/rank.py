"""spark-submit entry point: fusionrank stage `rank` (lib/fusionrank/ranks/stage.py).

    spark-submit --py-files dist/fusionrank.zip jobs/rank.py --conf conf/cluster.yaml --date YYYY-MM-DD
"""

import sys

from fusionrank.ranks.stage import rank
from fusionrank.pipeline.runner import job_main

if __name__ == "__main__":
    sys.exit(job_main(rank))
