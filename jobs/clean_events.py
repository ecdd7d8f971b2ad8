"""spark-submit entry point: fusionrank stage `clean_events` (lib/fusionrank/clean/stage.py).

    spark-submit --py-files dist/fusionrank.zip jobs/clean_events.py --conf conf/cluster.yaml --date YYYY-MM-DD
"""

import sys

from fusionrank.clean.stage import clean_events
from fusionrank.pipeline.runner import job_main

if __name__ == "__main__":
    sys.exit(job_main(clean_events))
