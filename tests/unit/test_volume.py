"""fusionrank.data.volume: the pure feed-volume comparison and the previous-night lookup."""

from __future__ import annotations

import json

from fusionrank.clean.volume import check_volume, previous_counts


def test_within_thresholds_is_fine():
    now, before = {"raw_rows": 90, "clean_rows": 85}, {"raw_rows": 100, "clean_rows": 100}
    assert check_volume("clean_events", now, before, "2026-11-21", 0.2, 1.0) is None


def test_drop_names_both_figures_and_the_night():
    message = check_volume("clean_events", {"raw_rows": 40, "clean_rows": 40, "distinct_users": 9},
                           {"raw_rows": 100, "clean_rows": 98, "distinct_users": 10}, "2026-11-21", 0.5, None)
    assert message.startswith("clean_events: feed volume changed against the previous successful night 2026-11-21")
    assert "raw_rows fell from 100 to 40 (-60.0%; cleaning.volume_max_drop_share is 50.0%)" in message
    assert "clean_rows fell from 98 to 40" in message
    assert "distinct_users" not in message  # -10% is within the share


def test_growth_and_off_switches():
    now, before = {"raw_rows": 301}, {"raw_rows": 100}
    assert "raw_rows grew from 100 to 301" in check_volume("s", now, before, "d", None, 2.0)
    assert check_volume("s", now, before, "d", 0.5, None) is None
    assert check_volume("s", now, before, "d", None, None) is None
    assert check_volume("s", now, None, None, 0.0, 0.0) is None  # first night


def test_previous_counts_is_the_latest_earlier_record(tmp_path):
    for date, rows in [("2026-11-19", 10), ("2026-11-20", 20), ("2026-11-22", 40)]:
        folder = tmp_path / f"run_date={date}"
        folder.mkdir()
        (folder / "clean_catalog.json").write_text(json.dumps({"counts": {"raw_rows": rows}}))
    (tmp_path / "run_date=2026-11-21").mkdir()  # a night whose clean_catalog failed: no record
    assert previous_counts(tmp_path, "clean_catalog", "2026-11-22") == ("2026-11-20", {"raw_rows": 20})
    assert previous_counts(tmp_path, "clean_catalog", "2026-11-19") is None
    assert previous_counts(tmp_path, "clean_events", "2026-11-22") is None
    assert previous_counts(tmp_path / "missing", "clean_catalog", "2026-11-22") is None
