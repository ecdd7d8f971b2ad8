"""The JVM jars fusionrank adds to Spark: Delta Lake (delta-spark) and S3A.

pyspark's pip package carries Spark and Hadoop's client but neither the Delta
classes nor Hadoop's S3A connector. `fetch()` resolves them once from Maven
Central with Spark's own Ivy (``spark-submit --packages`` with ``spark.jars.ivy``
pointing into the cache folder) and writes a manifest of the resolved files;
afterwards sessions use the cached files through ``spark.jars`` and need no
network.

    python -m fusionrank.core.jars fetch          # what `make jars` runs
    python -m fusionrank.core.jars show           # the cached files

The cache folder is ``$FUSIONRANK_JARS_DIR``, else ``.jars`` at the project root
(beside ``lib/``). Jars are never committed. Behind a Maven mirror, set
``$FUSIONRANK_MAVEN_REPOSITORIES`` or ``$FUSIONRANK_IVY_SETTINGS`` (`submit_args`).

Versions: pyspark 4.2.0 bundles hadoop-client 3.5.0, so hadoop-aws is 3.5.0 (its
POM brings the AWS SDK v2 bundle 2.35.4 and analyticsaccelerator-s3). delta-spark
4.4.1 (the Python package's version) has no jar on Maven Central; 4.4.0 is the
newest ``io.delta:delta-spark_2.13`` and is built against Spark 4.2.0.
"""

from __future__ import annotations

import argparse
import json
import re
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

DELTA_VERSION = "4.4.0"
HADOOP_VERSION = "3.5.0"
GROUPS = {
    "delta": [f"io.delta:delta-spark_2.13:{DELTA_VERSION}"],
    "s3a": [f"org.apache.hadoop:hadoop-aws:{HADOOP_VERSION}"],
}
MANIFEST = "manifest.json"
ENV_DIR = "FUSIONRANK_JARS_DIR"
REPOSITORIES_ENV = "FUSIONRANK_MAVEN_REPOSITORIES"
IVY_SETTINGS_ENV = "FUSIONRANK_IVY_SETTINGS"


class JarsError(RuntimeError):
    """The jars could not be fetched or are not in the cache."""


def jars_dir() -> Path:
    env = os.environ.get(ENV_DIR)
    if env:
        return Path(env).expanduser().resolve()
    return Path(__file__).resolve().parents[3] / ".jars"  # lib/fusionrank/core/jars.py -> the project root


_ARTIFACT = re.compile(r"^(.+?)-\d")


def _artifact(jar_name: str, ivy: bool = False) -> str:
    """`parquet-hadoop-1.17.0.jar` (pyspark's) or, with `ivy`, Ivy's `org.apache.parquet_parquet-hadoop-1.16.0.jar`
    -> `parquet-hadoop`."""
    name = jar_name.split("_", 1)[1] if ivy else jar_name
    match = _ARTIFACT.match(name)
    return match.group(1) if match else name[:-len(".jar")]


def _spark_home() -> Path:
    """pyspark's package folder: Spark's home in a pip install (bin/, jars/)."""
    import pyspark

    return Path(pyspark.__file__).parent


def _bundled_artifacts() -> set[str]:
    return {_artifact(jar.name) for jar in (_spark_home() / "jars").glob("*.jar")}


def _bundled_hadoop_version() -> str | None:
    for jar in (_spark_home() / "jars").glob("hadoop-client-api-*.jar"):
        return jar.name[len("hadoop-client-api-"):-len(".jar")]
    return None


def manifest(folder: Path | None = None) -> dict | None:
    """The cache's manifest ({group: [jar paths]}, coordinates), None when not fetched."""
    path = (folder or jars_dir()) / MANIFEST
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    if data.get("coordinates") != GROUPS:
        return None  # fetched for other versions: fetch again
    if not all(Path(p).is_file() for jars in data["jars"].values() for p in jars):
        return None
    return data


def cached_jars(*groups: str) -> list[str] | None:
    """The cached jar files of `groups` (default: all), None when they are not cached."""
    data = manifest()
    if data is None:
        return None
    seen: list[str] = []
    for group in groups or tuple(GROUPS):
        for path in data["jars"][group]:
            if path not in seen:
                seen.append(path)
    return seen


# Ivy's resolution runs inside spark-submit, before any application starts. The main
# class is Hadoop's VersionInfo (in pyspark's bundled hadoop-client-api): it prints a
# line and exits, so no SparkContext starts. A Python app would start one, and local
# mode then copies every resolved jar (the 660 MiB AWS SDK bundle among them) into a
# temp folder: one more copy on a disk that already holds Ivy's download and its
# retrieved jars.
_RESOLVE_MAIN = "org.apache.hadoop.util.VersionInfo"
ATTEMPTS = 3
# Ivy downloads into <ivy>/cache and copies into <ivy>/jars, so a group needs about
# twice its jars' size while it resolves (delta 90 MiB; s3a 660 MiB, the SDK bundle).
NEEDED_FREE_BYTES = {"delta": 2**28, "s3a": 3 * 2**29}


def submit_args(coordinates: list[str], ivy: Path, environ: dict[str, str] | None = None) -> list[str]:
    """spark-submit's arguments for one resolution. Where Maven Central is reached
    through a mirror (Artifactory, Nexus, a cloud's package proxy),
    ``$FUSIONRANK_MAVEN_REPOSITORIES`` (comma-separated URLs, tried before Central) or
    ``$FUSIONRANK_IVY_SETTINGS`` (an ivysettings.xml, which then owns every resolver)
    point Ivy at it, as spark-submit's own --repositories and spark.jars.ivySettings do."""
    environ = os.environ if environ is None else environ
    args = ["--conf", f"spark.jars.ivy={ivy}"]
    settings = environ.get(IVY_SETTINGS_ENV, "").strip()
    if settings:
        if not Path(settings).is_file():
            raise JarsError(f"{IVY_SETTINGS_ENV}={settings}: no such file")
        args += ["--conf", f"spark.jars.ivySettings={Path(settings).resolve()}"]
    repositories = ",".join(url.strip() for url in environ.get(REPOSITORIES_ENV, "").split(",") if url.strip())
    if repositories:
        args += ["--repositories", repositories]
    return args + ["--packages", ",".join(coordinates), "--class", _RESOLVE_MAIN, "spark-internal"]


def _resolve(coordinates: list[str], ivy: Path) -> subprocess.CompletedProcess:
    home = _spark_home()
    env = dict(os.environ)
    env["SPARK_HOME"] = str(home)
    env.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    env.setdefault("PYSPARK_PYTHON", sys.executable)
    return subprocess.run([str(home / "bin" / "spark-submit"), *submit_args(coordinates, ivy, env)],
                          env=env, capture_output=True, text=True)


def _failure_summary(output: str, tail_lines: int = 20) -> str:
    """The lines that say what went wrong (Ivy's and Java's), then the output's tail:
    a JVM stack trace alone ends with frames, not with its cause."""
    lines = output.splitlines()
    causes = [line for line in lines
              if re.search(r"(Exception|Error|unresolved|not found|FAILED|No space)", line)
              and not line.lstrip().startswith("at ")]
    tail = lines[-tail_lines:]
    picked = [line for line in causes[:15] if line not in tail]
    return "\n".join(picked + (["..."] if picked else []) + tail)


def fetch(folder: Path | None = None, force: bool = False) -> dict:
    """Resolve every group into `folder` (one Ivy resolution per group, retried on a
    failure) and write the manifest. Ivy's download cache is removed afterwards: the
    manifest names only the retrieved jars."""
    folder = folder or jars_dir()
    if not force and manifest(folder) is not None:
        return manifest(folder)
    bundled = _bundled_hadoop_version()
    if bundled and bundled != HADOOP_VERSION:
        raise JarsError(f"pyspark bundles hadoop-client {bundled} but hadoop-aws {HADOOP_VERSION} is pinned: "
                        f"change HADOOP_VERSION in {__file__}")
    folder.mkdir(parents=True, exist_ok=True)
    result: dict[str, list[str]] = {}
    provided: dict[str, list[str]] = {}
    bundled_artifacts = _bundled_artifacts()
    for group, coordinates in GROUPS.items():
        ivy = folder / "ivy" / group
        shutil.rmtree(ivy, ignore_errors=True)
        free = shutil.disk_usage(folder).free
        if free < NEEDED_FREE_BYTES[group]:
            raise JarsError(f"{free / 2**30:.2f} GiB free under {folder}; resolving {coordinates} needs about "
                            f"{NEEDED_FREE_BYTES[group] / 2**30:.2f} GiB (set {ENV_DIR} to a folder on a larger disk)")
        for attempt in range(1, ATTEMPTS + 1):
            proc = _resolve(coordinates, ivy)
            resolved = sorted((ivy / "jars").glob("*.jar"))
            if proc.returncode == 0 and resolved:
                break
            if attempt == ATTEMPTS:
                why = (_failure_summary(proc.stdout + proc.stderr) if proc.returncode != 0
                       else f"spark-submit exited 0 but left no jars in {ivy / 'jars'}")
                raise JarsError(f"could not resolve {coordinates} from Maven Central into {ivy} "
                                f"({ATTEMPTS} attempts; spark-submit exit {proc.returncode}):\n{why}")
            print(f"resolving {coordinates}: attempt {attempt} failed (exit {proc.returncode}), trying again",
                  file=sys.stderr)
            shutil.rmtree(ivy, ignore_errors=True)  # a half-downloaded jar must not be reused
            time.sleep(5 * attempt)
        shutil.rmtree(ivy / "cache", ignore_errors=True)
        # Transitive dependencies pyspark already ships (Hadoop client, Parquet, Jackson,
        # log4j...) stay out: two versions of one library on a classpath is a lottery.
        result[group] = [str(p) for p in resolved if _artifact(p.name, ivy=True) not in bundled_artifacts]
        provided[group] = [p.name for p in resolved if _artifact(p.name, ivy=True) in bundled_artifacts]
    data = {"coordinates": GROUPS, "jars": result, "provided_by_pyspark": provided}
    (folder / MANIFEST).write_text(json.dumps(data, indent=2) + "\n")
    return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fusionrank.core.jars", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["fetch", "show"])
    parser.add_argument("--force", action="store_true", help="resolve again even when cached")
    args = parser.parse_args(argv)
    if args.command == "fetch":
        try:
            data = fetch(force=args.force)
        except JarsError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    else:
        data = manifest()
        if data is None:
            print(f"no jars cached in {jars_dir()}: run `make jars`", file=sys.stderr)
            return 1
    for group, jars in data["jars"].items():
        size = sum(Path(p).stat().st_size for p in jars) / 2**20
        print(f"{group}: {len(jars)} jars, {size:.0f} MiB")
        for path in jars:
            print(f"  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
