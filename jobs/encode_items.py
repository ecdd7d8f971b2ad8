"""spark-submit entry point: fusionrank stage `encode_items`.

    spark-submit --py-files dist/fusionrank.zip jobs/encode_items.py --conf conf/cluster.yaml --date YYYY-MM-DD
"""

import sys

from fusionrank.interfaces.cli import job_main

if __name__ == "__main__":
    sys.exit(job_main("encode_items"))
