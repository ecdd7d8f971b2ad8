"""Config layering a person can see: the base layer comes from the project's own
conf/base.yaml (or an explicit --base / base:), never from the overlay's folder;
YAML errors name file, line and column; `fusionrank config show` names each value's
source file."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from fusionrank.core import config as config_module
from fusionrank.interfaces.cli import main
from fusionrank.core.config import PROJECT_ROOT_ENV, ConfigError, load_config
from fusionrank.interfaces.config_show import effective_values

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """A project folder with conf/base.yaml; no FUSIONRANK_PROJECT_ROOT set."""
    monkeypatch.delenv(PROJECT_ROOT_ENV, raising=False)
    folder = tmp_path / "project"
    (folder / "conf").mkdir(parents=True)
    shutil.copy(ROOT / "conf" / "base.yaml", folder / "conf" / "base.yaml")
    return folder


@pytest.fixture
def deployed(tmp_path) -> Path:
    """An overlay kept outside conf/, as /etc/fusionrank/prod.yaml would be."""
    etc = tmp_path / "etc" / "fusionrank"
    etc.mkdir(parents=True)
    path = etc / "prod.yaml"
    path.write_text("rank: {k: 25}\n")
    return path


def test_overlay_outside_conf_keeps_the_project_base(project, deployed, monkeypatch):
    monkeypatch.setenv(PROJECT_ROOT_ENV, str(project))
    monkeypatch.chdir(deployed.parent)
    settings = load_config(deployed)
    assert settings.source_files == [str(project / "conf" / "base.yaml"), str(deployed)]
    assert settings.rank.k == 25
    # base.yaml's values, not pydantic defaults
    assert settings.spark.conf["spark.sql.shuffle.partitions"] == "8"
    assert settings.profiles.event_weights == load_config(project / "conf" / "base.yaml").profiles.event_weights
    # relative paths resolve from the project root, not from the overlay's folder
    assert settings.project_root == project
    assert settings.storage.root == str(project / "warehouse")
    assert settings.inputs.catalog.path == str(project / "data/raw/movielens-100k/catalog.jsonl")


def test_overlay_outside_conf_finds_the_project_from_the_working_directory(project, deployed, monkeypatch):
    monkeypatch.chdir(project)
    settings = load_config(deployed)
    assert settings.source_files[0] == str(project / "conf" / "base.yaml")
    assert settings.project_root == project


def test_a_base_beside_the_overlay_is_not_picked_up(project, deployed, monkeypatch):
    (deployed.parent / "base.yaml").write_text("rank: {k: 3}\n")  # not the project's base
    monkeypatch.setenv(PROJECT_ROOT_ENV, str(project))
    settings = load_config(deployed)
    assert str(deployed.parent / "base.yaml") not in settings.source_files
    assert settings.rank.k == 25


def test_explicit_base_argument_and_base_key(project, deployed, tmp_path, monkeypatch):
    other = tmp_path / "shared" / "base.yaml"
    other.parent.mkdir()
    other.write_text((project / "conf" / "base.yaml").read_text().replace("max_candidates: 1000",
                                                                         "max_candidates: 77"))
    monkeypatch.setenv(PROJECT_ROOT_ENV, str(project))
    by_arg = load_config(deployed, base=other)
    assert by_arg.source_files == [str(other), str(deployed)] and by_arg.rank.max_candidates == 77
    deployed.write_text("base: ../../shared/base.yaml\nrank: {k: 25}\n")  # relative to the overlay's folder
    by_key = load_config(deployed)
    assert by_key.source_files == [str(other), str(deployed)] and by_key.rank.max_candidates == 77
    # --base wins over the key
    assert load_config(deployed, base=project / "conf" / "base.yaml").rank.max_candidates == 1000


def test_missing_explicit_base_is_an_error(deployed, tmp_path):
    with pytest.raises(ConfigError, match=r"base config .*nope.yaml does not exist"):
        load_config(deployed, base=tmp_path / "nope.yaml")


def test_no_base_anywhere_is_an_error_not_defaults(deployed, tmp_path, monkeypatch):
    monkeypatch.delenv(PROJECT_ROOT_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    # As installed from a wheel: no source checkout with conf/base.yaml beside the package.
    monkeypatch.setattr(config_module, "_package_checkout", lambda: tmp_path / "site-packages")
    with pytest.raises(ConfigError) as info:
        load_config(deployed)
    message = str(info.value)
    assert f"no base layer for {deployed}" in message
    assert "--base" in message and PROJECT_ROOT_ENV in message and "base: null" in message


def test_project_root_env_without_a_base_is_an_error(deployed, tmp_path, monkeypatch):
    monkeypatch.setenv(PROJECT_ROOT_ENV, str(tmp_path))
    with pytest.raises(ConfigError, match=rf"{PROJECT_ROOT_ENV}=.*conf/base.yaml does not exist"):
        load_config(deployed)


def test_yaml_error_names_file_line_and_column(project):
    path = project / "conf" / "bad.yaml"
    path.write_text("rank:\n  k: 10\n  similar_k: [1, 2\nspark: {}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message
    assert "at line 4, column 6: expected ',' or ']', but got ':'" in message
    assert "while parsing a flow sequence that starts at line 3, column 14" in message
    assert "<unicode string>" not in message


def test_config_show_names_each_values_source(project, deployed, monkeypatch, capsys):
    monkeypatch.setenv(PROJECT_ROOT_ENV, str(project))
    assert main(["config", "show", "--conf", str(deployed)]) == 0
    out = capsys.readouterr().out
    settings = load_config(deployed)
    assert f"digest {settings.digest()}" in out
    lines = {line.split(" = ")[0].strip(): line for line in out.splitlines() if " = " in line}
    assert lines["rank.k"].endswith(f"# {deployed}") and "= 25" in lines["rank.k"]
    assert lines["rank.max_candidates"].endswith(f"# {project / 'conf' / 'base.yaml'}")
    assert lines["spark.conf.spark.sql.shuffle.partitions"].endswith("base.yaml")
    assert lines["cleaning.epoch_millis_threshold"].endswith("# default")  # in no file


def test_effective_values_cover_every_setting(project):
    settings = load_config(project / "conf" / "base.yaml")
    keys = {key for key, _, _ in effective_values(settings)}
    assert {"inputs.catalog.path", "cleaning.volume_max_drop_share", "index.type"} <= keys


def test_volume_and_csv_settings_are_validated(project):
    path = project / "conf" / "env.yaml"
    path.write_text("cleaning: {volume_max_drop_share: 1.5}\n")
    with pytest.raises(ConfigError, match=r"cleaning\.volume_max_drop_share"):
        load_config(path)
    path.write_text("inputs: {catalog: {path: x.csv, format: csv, delimiter: ';;'}}\n")
    with pytest.raises(ConfigError, match=r"inputs\.catalog\.delimiter"):
        load_config(path)
    path.write_text("inputs: {catalog: {path: x.csv, format: csv, delimiter: '\"'}}\n")
    with pytest.raises(ConfigError, match=r"two different characters"):
        load_config(path)
