"""The jar cache's pure parts: artifact names, the manifest's validity, and what a
failed resolution reports (the cause, not only a stack trace's last frames)."""

import json

from fusionrank.core import jars


def test_artifact_names_from_pyspark_and_ivy_file_names():
    assert jars._artifact("parquet-hadoop-1.17.0.jar") == "parquet-hadoop"
    assert jars._artifact("org.apache.parquet_parquet-hadoop-1.16.0.jar", ivy=True) == "parquet-hadoop"
    assert jars._artifact("io.delta_delta-spark_2.13-4.4.0.jar", ivy=True) == "delta-spark_2.13"


def test_manifest_is_void_when_versions_changed_or_a_jar_is_gone(tmp_path):
    jar = tmp_path / "a.jar"
    jar.write_bytes(b"x")
    data = {"coordinates": jars.GROUPS, "jars": {"delta": [str(jar)], "s3a": [str(jar)]}}
    (tmp_path / jars.MANIFEST).write_text(json.dumps(data))
    assert jars.manifest(tmp_path)["jars"]["delta"] == [str(jar)]
    (tmp_path / jars.MANIFEST).write_text(json.dumps({**data, "coordinates": {"delta": ["io.delta:old:1.0"]}}))
    assert jars.manifest(tmp_path) is None
    (tmp_path / jars.MANIFEST).write_text(json.dumps(data))
    jar.unlink()
    assert jars.manifest(tmp_path) is None


def test_failure_summary_puts_the_cause_before_the_stack_trace():
    output = "\n".join(
        [":: resolving dependencies :: org.apache.spark#spark-submit-parent",
         "\t\tmodule not found: io.delta#nope_2.13;9.9.9",
         "Exception in thread \"main\" java.lang.RuntimeException: [unresolved dependency: io.delta#nope_2.13;9.9.9]"]
        + [f"\tat org.apache.spark.Frame{i}.call(Frame.scala:{i})" for i in range(40)])
    summary = jars._failure_summary(output).splitlines()
    assert summary[0].strip() == "module not found: io.delta#nope_2.13;9.9.9"
    assert summary[1].startswith("Exception in thread")
    assert summary[-1].endswith("(Frame.scala:39)")
    assert not any("Frame0" in line for line in summary)


def test_submit_args_take_a_mirror_or_ivy_settings_from_the_environment(tmp_path):
    ivy = tmp_path / "ivy"
    plain = jars.submit_args(["g:a:1", "g:b:2"], ivy, {})
    assert plain == ["--conf", f"spark.jars.ivy={ivy}", "--packages", "g:a:1,g:b:2",
                     "--class", jars._RESOLVE_MAIN, "spark-internal"]
    mirrored = jars.submit_args(["g:a:1"], ivy, {jars.REPOSITORIES_ENV: " https://m1/maven2 ,, https://m2 "})
    assert mirrored[mirrored.index("--repositories") + 1] == "https://m1/maven2,https://m2"
    settings = tmp_path / "ivysettings.xml"
    settings.write_text("<ivysettings/>")
    with_settings = jars.submit_args(["g:a:1"], ivy, {jars.IVY_SETTINGS_ENV: str(settings)})
    assert f"spark.jars.ivySettings={settings.resolve()}" in with_settings
    try:
        jars.submit_args(["g:a:1"], ivy, {jars.IVY_SETTINGS_ENV: str(tmp_path / "missing.xml")})
    except jars.JarsError as exc:
        assert "missing.xml" in str(exc)
    else:
        raise AssertionError("a missing ivysettings.xml must be an error")


def test_the_default_cache_is_dot_jars_at_the_project_root(monkeypatch):
    from pathlib import Path

    monkeypatch.delenv(jars.ENV_DIR, raising=False)
    assert jars.jars_dir() == Path(__file__).resolve().parents[2] / ".jars"
