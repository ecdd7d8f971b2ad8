"""Unit tests for fusionrank.config (no Spark)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from fusionrank.core.config import ConfigError, Settings, load_config

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"


@pytest.fixture
def conf_dir(tmp_path: Path) -> Path:
    """A project folder in tmp_path with conf/base.yaml copied from the repo."""
    folder = tmp_path / "conf"
    folder.mkdir()
    shutil.copy(CONF / "base.yaml", folder / "base.yaml")
    return folder


def write_overlay(conf_dir: Path, text: str, name: str = "env.yaml") -> Path:
    path = conf_dir / name
    path.write_text(text)
    return path


# -- the shipped files ----------------------------------------------------------------
def test_local_yaml_loads_and_paths_resolve_against_project_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the working directory must not matter
    settings = load_config(CONF / "local.yaml")
    assert isinstance(settings, Settings)
    assert settings.project_root == ROOT
    assert settings.storage.root == str(ROOT / "warehouse")  # paths are strings (URIs or absolute local paths)
    assert settings.inputs.catalog.path == str(ROOT / "data" / "raw" / "movielens-100k" / "catalog.jsonl")
    assert settings.inputs.events.path == str(ROOT / "data" / "raw" / "movielens-100k" / "events.jsonl")
    assert settings.models.text.path is None
    # local.yaml overrides these on top of base.yaml
    assert settings.spark.driver_memory == "4g"
    assert settings.spark.conf["spark.sql.shuffle.partitions"] == "4"
    assert settings.source_files == [str(CONF / "base.yaml"), str(CONF / "local.yaml")]
    assert settings.storage.table_path("catalog_clean") == str(ROOT / "warehouse" / "catalog_clean")


def test_relative_paths_resolve_against_tmp_project(conf_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(conf_dir)
    overlay = write_overlay(conf_dir, "storage: {root: out/wh}\nmodels: {text: {path: models/minilm}}\n")
    settings = load_config(overlay)
    assert settings.storage.root == str((tmp_path / "out" / "wh").resolve())
    assert settings.models.text.path == str((tmp_path / "models" / "minilm").resolve())
    assert settings.inputs.events.path == str((tmp_path / "data/raw/movielens-100k/events.jsonl").resolve())


def test_absolute_paths_are_kept(conf_dir, tmp_path):
    target = tmp_path / "elsewhere" / "catalog.jsonl"
    overlay = write_overlay(conf_dir, f"inputs: {{catalog: {{path: '{target}', format: csv}}}}\n")
    settings = load_config(overlay)
    assert settings.inputs.catalog.path == str(target)
    assert settings.inputs.catalog.format == "csv"
    # the other input still comes from base.yaml
    assert settings.inputs.events.format == "json"


# -- errors name the key and the file --------------------------------------------------
def test_unknown_key_names_key_path_and_overlay_file(conf_dir):
    overlay = write_overlay(conf_dir, 'spark:\n  mastr: "local[2]"\n')
    with pytest.raises(ConfigError) as info:
        load_config(overlay)
    message = str(info.value)
    assert "spark.mastr" in message
    assert str(overlay) in message
    assert "unknown key" in message
    # base.yaml is not the file to fix
    assert str(conf_dir / "base.yaml") not in message


def test_unknown_top_level_key(conf_dir):
    overlay = write_overlay(conf_dir, "rnak: {k: 5}\n")
    with pytest.raises(ConfigError, match="rnak") as info:
        load_config(overlay)
    assert str(overlay) in str(info.value)


def test_wrong_type_names_key_and_file(conf_dir):
    overlay = write_overlay(conf_dir, 'rank: {k: "ten"}\n')
    with pytest.raises(ConfigError) as info:
        load_config(overlay)
    message = str(info.value)
    assert "rank.k" in message
    assert str(overlay) in message


def test_a_bad_index_opq_value_names_the_key_and_the_choices(conf_dir):
    overlay = write_overlay(conf_dir, "index: {opq: maybe}\n")
    with pytest.raises(ConfigError, match=r"index\.opq: Value error, must be auto, true or false, got 'maybe'"):
        load_config(overlay)
    assert load_config(write_overlay(conf_dir, "index: {opq: false}\n")).index.opq is False


def test_out_of_range_value_is_rejected(conf_dir):
    overlay = write_overlay(conf_dir, "rank: {k: 0}\n")
    with pytest.raises(ConfigError, match=r"rank\.k"):
        load_config(overlay)


def test_invalid_event_type_in_event_weights(conf_dir):
    overlay = write_overlay(conf_dir, "profiles:\n  event_weights: {view: 1.0, wishlist: 2.0}\n")
    with pytest.raises(ConfigError) as info:
        load_config(overlay)
    message = str(info.value)
    assert "profiles.event_weights" in message
    assert "wishlist" in message
    assert str(overlay) in message


def test_negative_event_weight_is_rejected(conf_dir):
    overlay = write_overlay(conf_dir, "profiles:\n  event_weights: {view: -1.0}\n")
    with pytest.raises(ConfigError, match="negative"):
        load_config(overlay)


def test_invalid_input_format(conf_dir):
    overlay = write_overlay(conf_dir, "inputs: {events: {format: xml}}\n")
    with pytest.raises(ConfigError, match=r"inputs\.events\.format"):
        load_config(overlay)


def test_missing_file_names_the_path(conf_dir):
    missing = conf_dir / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(missing)
    assert str(missing) in str(info.value)
    assert "does not exist" in str(info.value)


def test_invalid_yaml(conf_dir):
    overlay = write_overlay(conf_dir, "spark: {master: [unclosed\n  bad: : :\n")
    with pytest.raises(ConfigError) as info:
        load_config(overlay)
    assert "not valid YAML" in str(info.value)
    assert str(overlay) in str(info.value)


def test_top_level_list_is_rejected(conf_dir):
    overlay = write_overlay(conf_dir, "- spark\n- rank\n")
    with pytest.raises(ConfigError) as info:
        load_config(overlay)
    assert "mapping" in str(info.value)
    assert str(overlay) in str(info.value)


def test_empty_overlay_means_base_only(conf_dir):
    overlay = write_overlay(conf_dir, "")
    settings = load_config(overlay)
    assert settings.rank.k == 10
    assert settings.spark.conf["spark.sql.shuffle.partitions"] == "8"


def test_reserved_keys_are_not_settable(conf_dir):
    overlay = write_overlay(conf_dir, "project_root: /tmp\n")
    with pytest.raises(ConfigError, match="project_root"):
        load_config(overlay)


def test_missing_required_section_without_base(tmp_path):
    folder = tmp_path / "conf"
    folder.mkdir()
    overlay = write_overlay(folder, "base: null\nrank: {k: 5}\n")  # complete on its own: no base, no inputs
    with pytest.raises(ConfigError) as info:
        load_config(overlay)
    assert "inputs" in str(info.value)
    assert "required key is missing" in str(info.value)


# -- merging ---------------------------------------------------------------------------
def test_overlay_deep_merges_spark_conf(conf_dir):
    overlay = write_overlay(conf_dir, "spark:\n  conf:\n    spark.sql.shuffle.partitions: 3\n")
    settings = load_config(overlay)
    conf = settings.spark.conf
    assert conf["spark.sql.shuffle.partitions"] == "3"  # overlay wins, stringified
    # base keys are kept, booleans lower-cased
    assert conf["spark.sql.execution.arrow.pyspark.enabled"] == "true"
    assert conf["spark.sql.execution.arrow.maxRecordsPerBatch"] == "1024"
    # siblings of spark.conf from base.yaml survive too
    assert settings.spark.master == "local[*]"
    assert settings.spark.app_name == "fusionrank"


def test_overrides_win_over_overlay(conf_dir):
    overlay = write_overlay(conf_dir, "rank: {k: 20, similar_k: 7}\n")
    settings = load_config(overlay, overrides={"rank": {"k": 5}})
    assert settings.rank.k == 5
    assert settings.rank.similar_k == 7
    assert settings.rank.max_candidates == 1000  # from base.yaml


def test_bad_override_is_reported_as_override(conf_dir):
    overlay = write_overlay(conf_dir, "")
    with pytest.raises(ConfigError) as info:
        load_config(overlay, overrides={"rank": {"kk": 5}})
    assert "rank.kk" in str(info.value)
    assert "<overrides>" in str(info.value)


def test_digest_is_stable_and_sensitive(conf_dir):
    overlay = write_overlay(conf_dir, "")
    a = load_config(overlay).digest()
    b = load_config(overlay).digest()
    c = load_config(overlay, overrides={"rank": {"k": 11}}).digest()
    assert a == b
    assert a != c


# -- evaluate.ks ---------------------------------------------------------------------------
def test_evaluate_ks_deduplicated_and_sorted(conf_dir):
    overlay = write_overlay(conf_dir, "evaluate: {ks: [20, 5, 10, 5]}\n")
    assert load_config(overlay).evaluate.ks == [5, 10, 20]


@pytest.mark.parametrize("ks", ["[0]", "[10, 0]", "[-1]", "[]"])
def test_evaluate_ks_rejects_non_positive_or_empty(conf_dir, ks):
    overlay = write_overlay(conf_dir, f"evaluate: {{ks: {ks}}}\n")
    with pytest.raises(ConfigError, match=r"evaluate\.ks"):
        load_config(overlay)


# -- paths from config are validated ---------------------------------------------------
@pytest.mark.parametrize("text, expected", [
    ('storage: {root: ""}\n', r"storage\.root: .*must name a folder \(it is empty\)"),
    ("storage: {root: /}\n", r"storage\.root: / is the filesystem root"),
    ("storage: {root: ../../../../../../../../../..}\n", r"storage\.root: / is the filesystem root"),
    ("storage: {root: .}\n", r"storage\.root: .* is the project folder itself"),
    ("storage: {index_dir: ../elsewhere}\n", r"storage\.index_dir: .*'\.\./elsewhere' must be a plain folder name"),
    ("storage: {tables: {metrics: /tmp/metrics}}\n", r"storage\.tables: .*metrics: '/tmp/metrics' must be a plain"),
    ('inputs: {events: {path: " "}}\n', r"inputs\.events\.path: .*must name a file or folder"),
])
def test_unsafe_or_empty_paths_are_rejected(conf_dir, text, expected):
    overlay = write_overlay(conf_dir, text)
    with pytest.raises(ConfigError, match=expected) as info:
        load_config(overlay)
    assert str(overlay) in str(info.value)


def test_reliability_and_privacy_defaults(conf_dir):
    settings = load_config(write_overlay(conf_dir, "{}\n"))
    assert settings.cleaning.max_quarantine_share == 0.5
    assert settings.storage.orphan_grace_hours == 6
    assert settings.privacy.pseudonymise_user_ids is False
    assert settings.privacy.salt_env == "FUSIONRANK_USER_SALT"
    with pytest.raises(ConfigError, match=r"cleaning\.max_quarantine_share"):
        load_config(write_overlay(conf_dir, "cleaning: {max_quarantine_share: 1.5}\n"))
