"""Config paths are URIs: a scheme is never mangled, local paths resolve as before,
and the object-store conventions (environment only) are written in one place."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fusionrank.core import uri as uris
from fusionrank.core.config import load_config
from fusionrank.core.errors import ConfigError
from fusionrank.storage import fs
from tests.conftest import ROOT


@pytest.mark.parametrize("value", ["s3://bucket/wh", "s3a://bucket/wh", "gs://b/wh", "hdfs://nn:8020/wh",
                                   "abfss://c@acct.dfs.core.windows.net/wh", "s3a://bucket/wh/"])
def test_a_scheme_is_never_resolved_against_the_project(value, tmp_path):
    assert uris.resolve(value, tmp_path) == value.rstrip("/")
    assert not uris.is_local(value)


def test_local_paths_resolve_as_before(tmp_path):
    assert uris.resolve("wh", tmp_path) == str((tmp_path / "wh").resolve())
    assert uris.resolve("/abs/wh", tmp_path) == "/abs/wh"
    assert uris.resolve("file:///abs/w%20h", tmp_path) == "/abs/w h"
    with pytest.raises(ValueError, match="names a local path"):
        uris.resolve("file://host/abs", tmp_path)
    with pytest.raises(ValueError, match="names no bucket"):
        uris.resolve("s3://", tmp_path)


def test_join_parent_name_and_the_forms_spark_and_pyarrow_get():
    assert uris.join("s3a://b/wh", "index", "run_date=2024-01-01") == "s3a://b/wh/index/run_date=2024-01-01"
    assert uris.join("/wh", "index") == os.path.join("/wh", "index")
    assert uris.parent("s3://b/wh/index") == "s3://b/wh" and uris.name("s3://b/wh/index") == "index"
    assert uris.spark_uri("/wh/t") == "file:///wh/t"
    assert uris.spark_uri("s3://b/wh") == "s3a://b/wh" and uris.spark_uri("gs://b/wh") == "gs://b/wh"
    assert uris.arrow_uri("s3a://b/wh") == "s3://b/wh" and uris.arrow_uri("file:///wh") == "/wh"
    assert uris.is_root("s3://bucket") and uris.is_root("/") and not uris.is_root("s3://bucket/wh")


def test_config_keeps_uris_and_refuses_a_bare_bucket(tmp_path):
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "env.yaml").write_text(
        f"base: {ROOT / 'conf' / 'base.yaml'}\n"
        "storage: {root: 's3a://bucket/wh'}\n"
        "inputs: {catalog: {path: 's3://bucket/raw/catalog', format: parquet}, events: {path: raw/events.jsonl}}\n"
        "models: {text: {path: 'gs://models/minilm'}}\n")
    settings = load_config(conf / "env.yaml")
    assert settings.storage.root == "s3a://bucket/wh"
    assert settings.storage.table_path("metrics") == "s3a://bucket/wh/metrics"
    assert settings.inputs.catalog.path == "s3://bucket/raw/catalog"
    assert settings.inputs.events.path == str(settings.project_root.resolve() / "raw" / "events.jsonl")
    assert settings.models.text.path == "gs://models/minilm"
    (conf / "env.yaml").write_text(f"base: {ROOT / 'conf' / 'base.yaml'}\nstorage: {{root: 's3://bucket'}}\n")
    with pytest.raises(ConfigError, match=r"storage\.root: s3://bucket is a bucket"):
        load_config(conf / "env.yaml")


def test_delta_rs_options_come_from_the_environment_only():
    assert uris.delta_storage_options("/local/table") is None
    env = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9000", "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s",
           "AWS_DEFAULT_REGION": "eu-west-1"}
    options = uris.delta_storage_options("s3a://b/wh/t", env)
    assert options == {"AWS_ENDPOINT_URL": "http://127.0.0.1:9000", "AWS_ACCESS_KEY_ID": "k",
                       "AWS_SECRET_ACCESS_KEY": "s", "AWS_DEFAULT_REGION": "eu-west-1", "AWS_REGION": "eu-west-1",
                       "AWS_FORCE_PATH_STYLE": "true", "AWS_ALLOW_HTTP": "true", "AWS_S3_ALLOW_UNSAFE_RENAME": "true"}
    # a locking provider replaces the unsafe rename; https endpoints keep TLS
    locked = uris.delta_storage_options("s3://b/t", {"AWS_ENDPOINT_URL": "https://s3.example",
                                                      "AWS_S3_LOCKING_PROVIDER": "dynamodb"})
    assert "AWS_S3_ALLOW_UNSAFE_RENAME" not in locked and "AWS_ALLOW_HTTP" not in locked


def test_spark_s3a_conf_fills_only_unset_keys():
    env = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9000", "AWS_ACCESS_KEY_ID": "k", "AWS_REGION": "us-east-1"}
    conf = uris.s3a_conf_from_env({"spark.hadoop.fs.s3a.endpoint": "http://other:1"}, env)
    assert "spark.hadoop.fs.s3a.endpoint" not in conf
    assert conf["spark.hadoop.fs.s3a.path.style.access"] == "true"
    assert conf["spark.hadoop.fs.s3a.connection.ssl.enabled"] == "false"
    assert conf["spark.hadoop.fs.s3a.endpoint.region"] == "us-east-1"
    assert uris.s3a_conf_from_env({}, {}) == {}


def test_the_fs_layer_on_local_paths(tmp_path):
    target = str(tmp_path / "a" / "b.txt")
    fs.write_text(target, "hello")
    assert fs.read_text(target) == "hello" and fs.is_file(target) and fs.is_dir(str(tmp_path / "a"))
    assert fs.listdir(str(tmp_path / "a")) == ["b.txt"] and fs.listdir(str(tmp_path / "none")) == []
    assert [e.path for e in fs.list_files(str(tmp_path))] == ["a/b.txt"]
    assert fs.relative(target, str(tmp_path)) == "a/b.txt"
    # a local folder is its own local copy; a local file needs no temporary copy
    assert fs.local_copy(str(tmp_path / "a"), "k") == str(tmp_path / "a")
    with fs.local_file(target) as local:
        assert Path(local).read_text() == "hello"
    fs.delete(str(tmp_path / "a"))
    assert not fs.exists(str(tmp_path / "a"))
