"""spark-submit entry point: `fusionrank doctor` (lib/fusionrank/interfaces/doctor.py),
the deployment check, run where the stages run (the same --py-files, conf and jars).

    spark-submit --py-files dist/fusionrank.zip jobs/doctor.py --conf conf/cluster.yaml
"""

import sys

from fusionrank.interfaces.cli import main

if __name__ == "__main__":
    sys.exit(main(["doctor", *sys.argv[1:]]))
