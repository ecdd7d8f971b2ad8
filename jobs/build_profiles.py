"""spark-submit entry point: fusionrank stage `build_profiles` (lib/fusionrank/profiles/stage.py).

    spark-submit --py-files dist/fusionrank.zip jobs/build_profiles.py --conf conf/cluster.yaml --date YYYY-MM-DD
"""

import sys

from fusionrank.profiles.stage import build_profiles
from fusionrank.pipeline.runner import job_main

if __name__ == "__main__":
    sys.exit(job_main(build_profiles))
