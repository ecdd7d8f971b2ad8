"""The fast version of bench/rank_vs_als.py: small sizes, in its own process (it builds
its own Spark session), asserting what the bench reports is right, not how fast."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.integration


def test_rank_stage_matches_exact_search_on_synthetic_factors(tmp_path):
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "SPARK_LOCAL_IP": "127.0.0.1"}
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "rank_vs_als.py"), "--users", "3000", "--items", "2000",
         "--k", "20", "--clusters", "32", "--cores", "2", "--recall-users", "500", "--breakdown", "--work", str(tmp_path)],
        capture_output=True, text=True, timeout=900, env=env, cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = {}
    for line in result.stdout.splitlines():
        match = re.match(r"^(\([a-d]\).*?)\s+([\d.]+)\s+(\d+)\s+(\S+)\s+([\d.]+)\s*$", line)
        if match:
            rows[match.group(1)[:3]] = float(match.group(5))
    assert set(rows) == {"(a)", "(b)", "(c)", "(d)"}, result.stdout[-2000:]
    assert rows["(a)"] == pytest.approx(1.0) and rows["(b)"] == pytest.approx(1.0)  # both exact
    assert rows["(d)"] >= 0.95  # the rank stage over the ANN index against the exact top-k
    assert rows["(d)"] == pytest.approx(rows["(c)"], abs=0.02)  # the stage adds no loss to the index's own
    # --breakdown: the rank pass built up in steps, each a Spark job that ran (seconds > 0)
    ladder = dict(re.findall(r"^\((d[12])\).*?\s([\d.]+)\s+\d+\s+\S+\s+nan\s*$", result.stdout, re.M))
    assert set(ladder) == {"d1", "d2"} and all(float(s) > 0 for s in ladder.values()), result.stdout[-2000:]
    assert "of which the executor job" in result.stdout
