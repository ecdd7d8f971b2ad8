"""spark-submit entry point: fusionrank stage `clean_catalog`.

    spark-submit --py-files dist/fusionrank.zip jobs/clean_catalog.py --conf conf/cluster.yaml --date YYYY-MM-DD
"""

import sys

from fusionrank.interfaces.cli import job_main

if __name__ == "__main__":
    sys.exit(job_main("clean_catalog"))
