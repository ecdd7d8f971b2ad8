"""spark-submit entry point: fusionrank stage `build_index` (lib/fusionrank/index/stage.py).

    spark-submit --py-files dist/fusionrank.zip jobs/build_index.py --conf conf/cluster.yaml --date YYYY-MM-DD
"""

import sys

from fusionrank.index.stage import build_index
from fusionrank.pipeline.runner import job_main

if __name__ == "__main__":
    sys.exit(job_main(build_index))
