"""The nightly pipeline on the test cluster: the `--py-files` zip, a deployment conf
layered on the project's conf/base.yaml, one spark-submit per stage in pipeline
order (as the Airflow DAG runs them), and the tables read back with `deltalake`.

    spark-submit --master spark://HOST:PORT --py-files fusionrank.zip --files base.yaml,night.yaml \\
        jobs/<stage>.py --conf <dir>/night.yaml --date 1998-04-22
"""

from __future__ import annotations

import json
import shutil
import os
import subprocess
import threading
import time
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.fs as pafs
from deltalake import DeltaTable

from fusionrank.core.jars import cached_jars
from fusionrank.pipeline.registry import ORDER
from tests.cluster.conftest import Cluster, ObjectStore, cluster_env, submit, submit_command
from tests.conftest import ROOT, RUN_DATE

# Row-for-row tables (published carries its decision time; it is checked on its own).
TABLES = ["catalog_clean", "events_clean", "quarantine", "item_embeddings", "user_profiles",
          "recs_user_topk", "recs_item_similar", "metrics", "query_topk"]
VOLATILE = {"quarantined_at", "encoded_at"}  # wall-clock columns that legitimately differ between two warehouses
ITEMS = 150  # the slice's most-touched items: text encoding dominates a night's time
STAGE_TIMEOUT = 900  # one stage; generous for a loaded 2-core machine (a quiet one: 40-110 s)


def build_zip(out: Path) -> Path:
    """dist/fusionrank.zip as `make dist` builds it: lib/fusionrank as a zip (no caches)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    lib = ROOT / "lib"
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted((lib / "fusionrank").rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                archive.write(path, path.relative_to(lib))
    return out


def small_slice(movielens: Path, out: Path) -> Path:
    """Every tenth user's events on the ITEMS items they touched most, and those items."""
    out.mkdir(parents=True, exist_ok=True)
    events = [e for e in map(json.loads, open(movielens / "events.jsonl")) if int(e["user_id"]) % 10 == 0]
    keep = {item for item, _ in Counter(e["item_id"] for e in events).most_common(ITEMS)}
    with open(out / "events.jsonl", "w") as dst:
        dst.writelines(json.dumps(e) + "\n" for e in events if e["item_id"] in keep)
    with open(movielens / "catalog.jsonl") as src, open(out / "catalog.jsonl", "w") as dst:
        dst.writelines(line for line in src if json.loads(line)["item_id"] in keep)
    return out


def write_conf(folder: Path, root: str, data: str, engine: str) -> Path:
    """A deployment overlay on the project's conf/base.yaml (copied beside it): the
    master comes from spark-submit; storage and inputs are URIs every process reaches."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "conf" / "base.yaml", folder / "base.yaml")
    overlay = {
        "spark": {"master": None, "ui_enabled": False, "conf": {"spark.sql.shuffle.partitions": 2}},
        "storage": {"root": root, "engine": engine},
        "inputs": {"catalog": {"path": f"{data}/catalog.jsonl"}, "events": {"path": f"{data}/events.jsonl"}},
        # Lighter than production: this checks the deployment, not the model.
        "models": {"text": {"max_length": 32}},
        "behaviour": {"max_iter": 3},
        "index": {"self_check_queries": 100},
        # 5 held-out users on 150 items say nothing about quality: a floor the slice can show.
        "publish": {"floors": {"ndcg@10": 0.0, "users_evaluated": 3}},
    }
    path = folder / "night.yaml"
    path.write_text(json.dumps(overlay, indent=2))
    return path


@dataclass
class Deployment:
    """What a night on the cluster needs: the zip, the conf, the Spark conf and jars."""
    cluster: Cluster
    zip_path: Path
    conf: Path
    root: str
    spark_conf: dict[str, str] = field(default_factory=dict)
    jars: list[str] = field(default_factory=list)
    class_path: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    store: ObjectStore | None = None  # None: storage.root is a local folder every process sees

    def table_uri(self, name: str) -> str:
        """The table as consumers' deltalake reads it (s3:// for the object store)."""
        root = self.root.replace("s3a://", "s3://", 1) if self.store else self.root
        return f"{root}/{name}"

    def storage_options(self) -> dict | None:
        return self.store.storage_options() if self.store else None

    def snapshot(self) -> dict[str, pd.DataFrame]:
        return snapshot(self)

    def versions(self) -> dict[str, int]:
        return {name: DeltaTable(self.table_uri(name), storage_options=self.storage_options()).version()
                for name in TABLES + ["published"]}

    def filesystem(self) -> tuple[pafs.FileSystem, str]:
        """(pyarrow filesystem, path) of storage.root, as the test sees it."""
        if not self.store:
            return pafs.LocalFileSystem(), self.root
        return self.store.filesystem(), self.root.split("://", 1)[1]

    def stage_args(self, stage: str) -> tuple[Path, list[str]]:
        return ROOT / "jobs" / f"{stage}.py", ["--conf", str(self.conf), "--date", RUN_DATE]

    @property
    def folder(self) -> Path:
        return self.conf.parent.parent

    @property
    def scratch(self) -> Path:
        """The driver's scratch (TMPDIR, spark.local.dir): local writes are allowed only here
        and in the workers' folders."""
        return self.folder / "scratch"

    @property
    def cwd(self) -> Path:
        return self.folder / "cwd"

    def submit_kwargs(self) -> dict:
        self.scratch.mkdir(exist_ok=True)
        self.cwd.mkdir(exist_ok=True)
        return dict(conf={**self.spark_conf, "spark.local.dir": str(self.scratch)}, jars=self.jars or None,
                    class_path=self.class_path or None, py_files=[str(self.zip_path)],
                    files=[str(self.conf.parent / "base.yaml"), str(self.conf)],
                    env=cluster_env(**self.env, TMPDIR=str(self.scratch)), cwd=self.cwd)

    def spark_defaults(self, folder: Path) -> Path:
        """A SPARK_CONF_DIR whose spark-defaults.conf holds what this deployment's
        spark-submit lines pass (for submitters that take no per-job conf: the DAG)."""
        kwargs = self.submit_kwargs()
        cmd = submit_command(self.cluster, Path("job.py"), [], kwargs["conf"], kwargs["jars"], kwargs["class_path"])
        lines = [cmd[i + 1].replace("=", " ", 1) for i, arg in enumerate(cmd) if arg == "--conf"]
        if kwargs["jars"]:
            lines.append("spark.jars " + ",".join(kwargs["jars"]))
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "spark-defaults.conf").write_text("\n".join(lines) + "\n")
        return folder

    def local_files(self) -> set[str]:
        """Files in the deployment's folder outside the driver's scratch (the conf, and a
        local storage.root), and in the working directory of spark-submit."""
        return {str(p.relative_to(self.folder)) for p in self.folder.rglob("*")
                if p.is_file() and self.scratch not in p.parents}

    def run_stage(self, stage: str, check: bool = True) -> subprocess.CompletedProcess:
        job, args = self.stage_args(stage)
        return submit(self.cluster, job, args, timeout=STAGE_TIMEOUT, check=check, **self.submit_kwargs())

    def run_night(self, stages: list[str] | None = None) -> dict[str, float]:
        """Every stage in pipeline order, one spark-submit each; seconds per stage."""
        seconds = {}
        for stage in stages or ORDER:
            started = time.perf_counter()
            proc = self.run_stage(stage)
            assert f"{stage} {RUN_DATE}" in proc.stdout, proc.stdout[-2000:]
            seconds[stage] = round(time.perf_counter() - started, 1)
        return seconds


def deployment(cluster: Cluster, inputs: dict, name: str, engine: str,
               store: ObjectStore | None = None) -> Deployment:
    """A night's deployment with its own conf folder. With `store`, inputs and
    storage.root are on the object store (s3a://), the credentials and endpoint in the
    environment of the driver and the executors and in Spark's Hadoop conf (never in the
    conf); else storage.root is a local folder every process sees."""
    tmp = inputs["tmp"]
    if store:
        root, data = f"s3a://{store.bucket}/{name}/warehouse", upload_inputs(store, inputs)
    else:
        root, data = str(tmp / name / "warehouse"), str(inputs["data"])
    conf = write_conf(tmp / name / "conf", root, data, engine)
    dep = Deployment(cluster, inputs["zip"], conf, root, store=store)
    # No jar cache on a cluster host: the session adds none (core.spark.jar_conf), the
    # command line brings them (as --packages or a cluster image would).
    dep.env["FUSIONRANK_JARS_DIR"] = str(tmp / "no-jar-cache")
    if engine == "delta-spark":
        jars = cached_jars("delta")
        assert jars, "the Delta jars are not cached: run `make jars`"
        dep.jars = jars
    if store:
        s3a = cached_jars("s3a")
        assert s3a, "the S3A jars are not cached: run `make jars`"
        dep.class_path = s3a  # hadoop-aws and the AWS SDK bundle on the hosts' class path, as an image has them
        dep.env.update(store.environment())
        dep.spark_conf.update(store.hadoop_conf())
        dep.spark_conf["spark.executorEnv.AWS_ENDPOINT_URL"] = store.endpoint
    return dep


def upload_inputs(store: ObjectStore, inputs: dict) -> str:
    """The slice's raw files on the object store (once); their s3a:// folder."""
    if "s3_data" not in inputs:
        fs = store.filesystem()
        for name in ("catalog.jsonl", "events.jsonl"):
            with fs.open_output_stream(f"{store.bucket}/raw/{name}") as out:
                out.write((inputs["data"] / name).read_bytes())
        inputs["s3_data"] = f"s3a://{store.bucket}/raw"
    return inputs["s3_data"]


# -- losing a worker in the middle of a stage ---------------------------------------------
def _descendants(root: int) -> list[int]:
    """Every process under `root` (by parent pid: PySpark's daemon makes its own process group)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = open(f"/proc/{entry}/stat").read()
            children.setdefault(int(stat[stat.rindex(")") + 2:].split()[1]), []).append(int(entry))
        except (OSError, ValueError):
            continue
    out, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _worker_pythons(root: int) -> list[int]:
    """PySpark Python processes (daemon and workers) under a worker process."""
    pids = []
    for pid in _descendants(root):
        try:
            if b"pyspark.daemon" in open(f"/proc/{pid}/cmdline", "rb").read():
                pids.append(pid)
        except OSError:
            continue
    return pids


def _has_loaded(pid: int, library: str) -> bool:
    try:
        return library in open(f"/proc/{pid}/maps").read()
    except OSError:
        return False


def _cpu_ticks(pid: int) -> int:
    try:
        stat = open(f"/proc/{pid}/stat").read()
        fields = stat[stat.rindex(")") + 2:].split()
        return int(fields[11]) + int(fields[12])  # utime + stime
    except (OSError, ValueError):
        return -1


@dataclass
class Kill:
    worker: int          # the worker killed
    replacement: int     # the worker started in its place
    after_s: float       # seconds into the stage
    stage_s: float       # the stage's whole time
    stderr: str


def run_with_worker_loss(dep: Deployment, stage: str, library: str, timeout: float = STAGE_TIMEOUT) -> Kill:
    """spark-submit `stage`; once a Python worker of one of the cluster's workers has
    `library` loaded and is using CPU (a task is doing the stage's real work in it),
    SIGKILL that worker's whole process group and start a replacement worker. The stage
    must still succeed."""
    result: dict = {}

    def target():
        try:
            result["proc"] = dep.run_stage(stage, check=False)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
            result["error"] = exc

    started = time.perf_counter()
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    victim, ticks = None, {}
    while thread.is_alive() and victim is None and time.perf_counter() - started < timeout:
        for number, proc in list(dep.cluster.workers.items()):
            for pid in _worker_pythons(proc.pid):
                if not _has_loaded(pid, library):
                    continue
                now, before = _cpu_ticks(pid), ticks.get(pid)
                ticks[pid] = now
                if before is not None and now > before:  # busy: a task is at work in it
                    victim = number
                    break
            if victim is not None:
                break
        else:
            time.sleep(0.2)
    assert victim is not None, f"{stage}: no Python worker loaded {library} while the stage ran: " + (
        result["proc"].stderr[-3000:] if "proc" in result else "")
    after = time.perf_counter() - started
    dep.cluster.kill_worker(victim, also=_descendants(dep.cluster.workers[victim].pid))
    replacement = dep.cluster.start_worker()
    dep.cluster.wait_worker(replacement)
    thread.join(timeout)
    if "error" in result:
        raise result["error"]
    proc = result["proc"]
    assert proc.returncode == 0, (f"{stage} failed after worker {victim} was killed {after:.1f} s in:\n"
                                  f"{proc.stdout[-2000:]}\n{proc.stderr[-6000:]}")
    return Kill(victim, replacement, round(after, 1), round(time.perf_counter() - started, 1), proc.stderr)


def snapshot(dep: Deployment) -> dict[str, pd.DataFrame]:
    """Every row-for-row table, read with deltalake as consumers read it, sorted."""
    frames = {}
    for name in TABLES:
        df = DeltaTable(dep.table_uri(name), storage_options=dep.storage_options()).to_pandas()
        df = df.drop(columns=[c for c in VOLATILE if c in df.columns])
        for column in df.columns:  # arrays -> tuples so frames compare and sort
            if df[column].map(lambda v: isinstance(v, (list, np.ndarray))).any():
                df[column] = df[column].map(lambda v: None if v is None else tuple(np.asarray(v).tolist()))
        frames[name] = df.sort_values(list(df.columns)).reset_index(drop=True)
    return frames


def assert_same_tables(left: dict[str, pd.DataFrame], right: dict[str, pd.DataFrame], what: str) -> None:
    for name in TABLES:
        a, b = left[name], right[name]
        assert list(a.columns) == list(b.columns), f"{what}: {name} columns {list(a.columns)} != {list(b.columns)}"
        assert len(a) == len(b), f"{what}: {name} has {len(a)} rows against {len(b)}"
        pd.testing.assert_frame_equal(a, b, check_dtype=False, obj=f"{what}: {name}")


def copy_tables(source: Deployment, target: Deployment, names: list[str]) -> None:
    """Copy whole table folders (log and files) between two deployments' roots."""
    src_fs, src = source.filesystem()
    dst_fs, dst = target.filesystem()
    for name in names:
        pafs.copy_files(f"{src}/{name}", f"{dst}/{name}", source_filesystem=src_fs, destination_filesystem=dst_fs)


def project_files() -> set[str]:
    """Untracked and ignored files of the checkout (a mangled URI would land here)."""
    out = subprocess.run(["git", "status", "--porcelain", "--ignored", "--untracked-files=all"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    return {line[3:] for line in out.splitlines()
            if not line[3:].startswith((".venv", "data/", ".jars", ".pytest_cache")) and "__pycache__" not in line}



def assert_no_local_writes(dep: Deployment, project_before: set[str]) -> None:
    """Nothing but the conf (and a local storage.root, when the night is not on the
    object store) in the deployment's folder outside the driver's scratch; nothing in
    spark-submit's working directory; no new file in the checkout."""
    allowed = {"conf/base.yaml", "conf/night.yaml"}
    stray = {f for f in dep.local_files() - allowed if dep.store or not f.startswith("warehouse/")}
    assert stray == set(), f"written to local paths outside Spark's scratch: {sorted(stray)[:20]}"
    new = project_files() - project_before
    assert new == set(), f"written into the checkout: {sorted(new)[:20]}"
