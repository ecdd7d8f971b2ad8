"""spark-submit entry point: fusionrank stage `tune_text_encoder` (lib/fusionrank/tuning/stage.py), weekly.

    spark-submit --py-files dist/fusionrank.zip jobs/tune_text_encoder.py --conf conf/cluster.yaml --date YYYY-MM-DD
"""

import sys

from fusionrank.pipeline.runner import job_main
from fusionrank.tuning.stage import tune_text_encoder

if __name__ == "__main__":
    sys.exit(job_main(tune_text_encoder))
