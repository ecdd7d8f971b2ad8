"""spark-submit entry point: fusionrank stage `encode_items` (lib/fusionrank/vectors/stage.py).

    spark-submit --py-files dist/fusionrank.zip jobs/encode_items.py --conf conf/cluster.yaml --date YYYY-MM-DD
"""

import sys

from fusionrank.vectors.stage import encode_items
from fusionrank.pipeline.runner import job_main

if __name__ == "__main__":
    sys.exit(job_main(encode_items))
