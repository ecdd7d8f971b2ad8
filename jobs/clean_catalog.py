"""spark-submit entry point: fusionrank stage `clean_catalog` (lib/fusionrank/clean/stage.py).

    spark-submit --py-files dist/fusionrank.zip jobs/clean_catalog.py --conf conf/cluster.yaml --date YYYY-MM-DD
"""

import sys

from fusionrank.clean.stage import clean_catalog
from fusionrank.pipeline.runner import job_main

if __name__ == "__main__":
    sys.exit(job_main(clean_catalog))
