"""spark-submit entry point: fusionrank stage `publish` (lib/fusionrank/publish/stage.py).

    spark-submit --py-files dist/fusionrank.zip jobs/publish.py --conf conf/cluster.yaml --date YYYY-MM-DD
"""

import sys

from fusionrank.publish.stage import publish
from fusionrank.pipeline.runner import job_main

if __name__ == "__main__":
    sys.exit(job_main(publish))
