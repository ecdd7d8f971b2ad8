"""The nightly HTML report, built from a real pipeline run on the MovieLens slice."""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
import re

import shutil

import pytest
from deltalake import DeltaTable

from fusionrank.pipeline import ORDER
from fusionrank.core.config import load_config
from fusionrank.interfaces.report import build_report
from tests.conftest import RUN_DATE

pytestmark = pytest.mark.integration

DAY = dt.date.fromisoformat(RUN_DATE)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run(night):
    """The report the shared night's `fusionrank run` wrote as its last step."""
    path = night["root"] / "reports" / f"run_date={RUN_DATE}" / "report.html"
    return {"settings": night["settings"], "root": night["root"], "path": path,
            "html": path.read_text(encoding="utf-8"), "conf": night["conf"]}


def _partition(root, table):
    frame = DeltaTable(str(root / table)).to_pandas()
    return frame[frame["run_date"].astype(str) == RUN_DATE]


def test_report_is_written_where_expected(run):
    assert run["path"] == run["root"] / "reports" / f"run_date={RUN_DATE}" / "report.html"
    assert run["path"].is_file()
    assert not [p for p in run["path"].parent.iterdir() if p.name.endswith(".tmp")]
    page = run["html"]
    assert page.startswith("<!DOCTYPE html>")
    assert RUN_DATE in page
    assert f"all {len(ORDER)} stages recorded" in page
    for stage in ORDER:
        assert stage in page, stage


def test_metrics_are_printed_as_in_the_table(run):
    metrics = _partition(run["root"], "metrics")
    page = run["html"]
    for name in ("ndcg", "precision", "recall"):
        row = metrics[(metrics["metric"] == name) & (metrics["k"] == 10)].iloc[0]
        assert f"{name}@10" in page
        assert f"{row['value']:.4f}" in page, name
        assert f"{row['baseline']:.4f}" in page, name


def test_plots_are_embedded_pngs(run):
    images = re.findall(r'<img[^>]+src="data:image/png;base64,([A-Za-z0-9+/=]+)"', run["html"])
    assert len(images) >= 3  # metric bars, trend, score histogram
    assert base64.b64decode(images[0])[:8] == PNG_SIGNATURE


def test_sample_user_and_their_recommendations(run):
    recs = _partition(run["root"], "recs_user_topk")
    catalog = _partition(run["root"], "catalog_clean")
    first_user = min(recs["user_id"], key=int)
    theirs = recs[recs["user_id"] == first_user].merge(catalog[["item_id", "title"]], on="item_id")
    assert len(theirs) > 0
    page = run["html"]
    assert f"user {html.escape(first_user)}<" in page
    assert html.escape(theirs.sort_values("rank")["title"].iloc[0]) in page


def test_index_self_check_is_shown(run):
    manifest = json.loads((run["root"] / "index" / f"run_date={RUN_DATE}" / "manifest.json").read_text())
    page = run["html"]
    assert "self_check.recall_at_10" in page
    assert f"{manifest['self_check']['recall_at_10']:.4f}" in page
    assert manifest["model_version"] in page


def test_report_is_self_contained(run):
    page = run["html"]
    # The embedded images' base64 may spell "http" by chance; look at everything else.
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "data:", page).lower()
    assert "<script" not in text
    assert "http" not in text
    assert "<link" not in text
    assert "@import" not in text and "url(" not in text
    for target in re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', page):
        assert target.startswith(("data:", "#")), target


def test_a_date_without_a_run_raises(run):
    with pytest.raises(ValueError, match="1998-04-21"):
        build_report(run["settings"], dt.date(1998, 4, 21))


def test_missing_index_gives_a_not_available_section(run, night_copy, spark, tmp_path):
    shutil.rmtree(night_copy / "index" / f"run_date={RUN_DATE}")
    settings = load_config(run["conf"], overrides={"storage": {"root": str(night_copy)}})
    out = build_report(settings, DAY, spark=spark, out_path=tmp_path / "no-index.html")
    page = out.read_text(encoding="utf-8")
    index_section = page.split('<section id="index">')[1].split("</section>")[0]
    assert "Not available" in index_section
    assert "recs_user_topk" not in index_section and "Recommendations" in page
