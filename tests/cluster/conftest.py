"""A real cluster for the tests, started and stopped by them (nothing outside pytest):

* `object_store`: an S3-compatible server (moto's, from PyPI) on 127.0.0.1 with a
  bucket; path-style access, dummy credentials in the environment;
* `cluster`: a Spark standalone master and two workers, each its own process (the
  pip package's `bin/spark-class`), each worker with one core, a small memory and its
  own work and local folders.

Everything binds to 127.0.0.1 on free ports. Every process runs in its own process
group and is killed with it at the end of the session, also when a test or the
start-up fails. The cluster's jars (Delta, S3A) come from the cache (`make jars`).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import pyspark

SPARK_HOME = Path(pyspark.__file__).parent
BUCKET = "fusionrank-test"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}
WORKER_MEMORY = "1g"
EXECUTOR_MEMORY = "512m"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class ObjectStore:
    endpoint: str
    bucket: str

    def storage_options(self) -> dict[str, str]:
        """deltalake (delta-rs) options for this server."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ALLOW_HTTP": "true", "AWS_S3_ALLOW_UNSAFE_RENAME": "true",
                "AWS_REGION": CREDENTIALS["AWS_REGION"], "AWS_ACCESS_KEY_ID": CREDENTIALS["AWS_ACCESS_KEY_ID"],
                "AWS_SECRET_ACCESS_KEY": CREDENTIALS["AWS_SECRET_ACCESS_KEY"], "AWS_FORCE_PATH_STYLE": "true"}

    def environment(self) -> dict[str, str]:
        """What a deployment puts in the environment of the driver and the executors."""
        return {**CREDENTIALS, "AWS_ENDPOINT_URL": self.endpoint}

    def filesystem(self):
        """pyarrow's S3 filesystem on this server (for the test's own reads and writes)."""
        import pyarrow.fs as pafs

        return pafs.S3FileSystem(endpoint_override=self.endpoint.split("://", 1)[1], scheme="http",
                                 region=CREDENTIALS["AWS_REGION"], access_key=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                                 secret_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"], force_virtual_addressing=False)

    def hadoop_conf(self) -> dict[str, str]:
        """Spark conf for S3A on this server (credentials from the environment)."""
        return {
            "spark.hadoop.fs.s3a.endpoint": self.endpoint,
            "spark.hadoop.fs.s3a.endpoint.region": CREDENTIALS["AWS_REGION"],
            "spark.hadoop.fs.s3a.path.style.access": "true",
            "spark.hadoop.fs.s3a.connection.ssl.enabled": "false",
            "spark.hadoop.fs.s3a.aws.credentials.provider":
                "software.amazon.awssdk.auth.credentials.EnvironmentVariableCredentialsProvider",
        }


@dataclass
class Cluster:
    master_url: str
    webui: str
    worker_dirs: list[Path]
    logs: Path
    procs: list[subprocess.Popen] = field(default_factory=list)
    root: Path | None = None
    workers: dict[int, subprocess.Popen] = field(default_factory=dict)  # worker number -> its process
    ports: dict[int, int] = field(default_factory=dict)  # worker number -> its RPC port

    def state(self) -> dict:
        with urllib.request.urlopen(f"{self.webui}/json", timeout=5) as response:
            return json.load(response)

    def alive_workers(self) -> int:
        return len([w for w in self.state()["workers"] if w["state"] == "ALIVE"])

    def start_worker(self) -> int:
        """One more worker process (one core, its own work and local folders); its number."""
        number = len(self.worker_dirs)
        work, local = self.root / f"worker{number}" / "work", self.root / f"worker{number}" / "local"
        work.mkdir(parents=True)
        local.mkdir()
        self.worker_dirs.append(work)
        env = cluster_env(SPARK_WORKER_DIR=str(work), SPARK_LOCAL_DIRS=str(local))
        self.ports[number] = free_port()
        proc = _start([str(SPARK_HOME / "bin" / "spark-class"), "org.apache.spark.deploy.worker.Worker",
                       "--host", "127.0.0.1", "--port", str(self.ports[number]), "--webui-port", str(free_port()),
                       "--cores", "1", "--memory", WORKER_MEMORY, "--work-dir", str(work), self.master_url],
                      self.logs / f"worker{number}.log", env)
        self.procs.append(proc)
        self.workers[number] = proc
        return number

    def kill_worker(self, number: int, also: list[int] = ()) -> None:
        """SIGKILL the worker's process group (the Worker JVM and its executors) and the
        processes `also` (their Python workers: PySpark's daemon has its own group), as
        when a host dies."""
        proc = self.workers.pop(number)
        os.killpg(proc.pid, signal.SIGKILL)
        for pid in also:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()

    def wait_worker(self, number: int, timeout: float = 90) -> None:
        """Until the master lists worker `number` as ALIVE."""
        port = self.ports[number]
        _wait(lambda: any(w["port"] == port and w["state"] == "ALIVE" for w in self.state()["workers"]) or None,
              timeout, f"worker {number} ALIVE", self.logs / f"worker{number}.log", self)

    def scratch_dirs(self) -> list[Path]:
        """Every worker's work and local folders (where Spark may write on a host)."""
        return [d for work in self.worker_dirs for d in (work, work.parent / "local")]


def _start(cmd: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    handle = open(log, "wb")
    try:
        return subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    finally:
        handle.close()


def _stop(procs: list[subprocess.Popen]) -> None:
    """SIGTERM each process group, then SIGKILL what is left after 10 s."""
    for proc in procs:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.time() + 10
    for proc in procs:
        try:
            proc.wait(max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the group: executors the worker started too
        except ProcessLookupError:
            pass
        proc.wait()


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def cluster_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(CREDENTIALS)
    env.update(SPARK_HOME=str(SPARK_HOME), SPARK_LOCAL_IP="127.0.0.1", PYSPARK_PYTHON=sys.executable,
               PYSPARK_DRIVER_PYTHON=sys.executable, SPARK_DAEMON_MEMORY="256m")
    env.pop("SPARK_CONF_DIR", None)
    # Drivers and executors import fusionrank from --py-files (the zip), not from a checkout.
    env.pop("PYTHONPATH", None)
    env.update(extra)
    return env


class StoreServer:
    """moto's S3 server in a thread of the test process, which can go down and come back
    on the same port (moto keeps the buckets in this process meanwhile). `trip_on`
    arms an outage: the first request it matches is answered 503 and the server stops,
    until `restart()`."""

    def __init__(self, port: int):
        self.port = port
        self.server = None
        self.trip_on = None  # (method, path) -> bool
        self.tripped = threading.Event()
        self.down = False  # also refuse requests on connections opened before the outage
        self.tripped_at = 0.0

    def start(self) -> None:
        import logging

        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
        outer = self

        class _Server(ThreadedMotoServer):
            def _server_entry(self) -> None:
                from werkzeug.serving import make_server
                from moto.moto_server.werkzeug_app import (DomainDispatcherApplication, MotoRequestHandler,
                                                           create_backend_app)

                app = DomainDispatcherApplication(create_backend_app)
                self._server = make_server(self._ip_address, self._port, outer._guard(app), True,
                                           request_handler=MotoRequestHandler)
                self._server_ready_event.set()
                self._server.serve_forever()

        self.server = _Server(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()

    def _guard(self, app):
        def guarded(environ, start_response):
            trip = self.trip_on
            if self.down or (trip is not None and trip(environ["REQUEST_METHOD"], environ.get("PATH_INFO", ""))):
                if not self.down:
                    self.trip_on, self.down, self.tripped_at = None, True, time.time()
                    self.tripped.set()
                    threading.Thread(target=self.stop, daemon=True).start()
                start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
                return [b"the object store is down (test outage)"]
            return app(environ, start_response)
        return guarded

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def restart(self) -> None:
        self.stop()
        self.down = False
        self.start()


@pytest.fixture(scope="session")
def store_server():
    server = StoreServer(free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def object_store(store_server):
    import boto3

    endpoint = f"http://127.0.0.1:{store_server.port}"
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name=CREDENTIALS["AWS_REGION"],
                      aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"])
    s3.create_bucket(Bucket=BUCKET)
    return ObjectStore(endpoint, BUCKET)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("spark-cluster")
    logs = root / "logs"
    logs.mkdir()
    spark_class = str(SPARK_HOME / "bin" / "spark-class")
    port, webui_port = free_port(), free_port()
    master_url = f"spark://127.0.0.1:{port}"
    cluster = Cluster(master_url, f"http://127.0.0.1:{webui_port}", [], logs, root=root)
    try:
        cluster.procs.append(_start(
            [spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port),
             "--webui-port", str(webui_port)], logs / "master.log", cluster_env()))
        _wait(lambda: cluster.state(), 60, "the master's web UI", logs / "master.log", cluster)
        for number in [cluster.start_worker() for _ in range(2)]:
            cluster.wait_worker(number)
        yield cluster
    finally:
        _stop(cluster.procs)


def _wait(probe, timeout: float, what: str, log: Path, cluster: Cluster):
    deadline = time.time() + timeout
    while time.time() < deadline:
        for proc in [cluster.procs[0], *cluster.workers.values()]:  # the master and the live workers
            if proc.poll() is not None:
                raise RuntimeError(f"a cluster process exited ({proc.args[1]}, rc {proc.returncode}) "
                                   f"while waiting for {what}:\n{_tail(log)}")
        try:
            if probe():
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"no {what} after {timeout:.0f} s:\n{_tail(log)}")


def submit_command(cluster: Cluster, job: Path, args: list[str], conf: dict[str, str],
                   jars: list[str] | None = None, class_path: list[str] | None = None,
                   py_files: list[str] | None = None, files: list[str] | None = None) -> list[str]:
    """The spark-submit command line of `job` on the cluster (client mode)."""
    cmd = [str(SPARK_HOME / "bin" / "spark-submit"), "--master", cluster.master_url,
           "--conf", "spark.driver.host=127.0.0.1", "--conf", "spark.driver.bindAddress=127.0.0.1",
           "--conf", f"spark.executor.memory={EXECUTOR_MEMORY}", "--conf", "spark.driver.memory=512m",
           "--conf", "spark.cores.max=2", "--conf", "spark.ui.enabled=false",
           # Run nothing before both executors are there (the test checks they both worked).
           "--conf", "spark.scheduler.minRegisteredResourcesRatio=1.0",
           "--conf", "spark.scheduler.maxRegisteredResourcesWaitingTime=120s"]
    for key, value in conf.items():
        cmd += ["--conf", f"{key}={value}"]
    for key, value in CREDENTIALS.items():
        cmd += ["--conf", f"spark.executorEnv.{key}={value}"]
    if jars:
        cmd += ["--jars", ",".join(jars)]
    if class_path:
        joined = os.pathsep.join(class_path)
        cmd += ["--conf", f"spark.driver.extraClassPath={joined}", "--conf", f"spark.executor.extraClassPath={joined}"]
    if py_files:
        cmd += ["--py-files", ",".join(py_files)]
    if files:
        cmd += ["--files", ",".join(files)]
    return cmd + [str(job), *args]


def submit(cluster: Cluster, job: Path, args: list[str], conf: dict[str, str], jars: list[str] | None = None,
           class_path: list[str] | None = None, timeout: float = 240, py_files: list[str] | None = None,
           files: list[str] | None = None, env: dict[str, str] | None = None,
           check: bool = True, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """spark-submit `job` to the cluster (client mode); raise with its output on failure
    (unless not `check`)."""
    cmd = submit_command(cluster, job, args, conf, jars, class_path, py_files, files)
    # Its own process group: a timeout kills the driver JVM and its Python together.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env or cluster_env(), start_new_session=True, cwd=cwd)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"spark-submit {job.name} ran over {timeout:.0f} s:\n{out[-3000:]}\n{err[-6000:]}")
    proc = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
    if check and proc.returncode != 0:
        raise AssertionError(f"spark-submit {job.name} failed (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-6000:]}")
    return proc


# -- the nightly pipeline on the cluster (tests/cluster/night.py) ---------------------------
@pytest.fixture(scope="session")
def night_inputs(movielens, tmp_path_factory):
    """The --py-files zip and a small MovieLens slice, shared by the cluster nights."""
    from tests.cluster.night import build_zip, small_slice

    tmp = tmp_path_factory.mktemp("cluster_night")
    return {"tmp": tmp, "zip": build_zip(tmp / "dist" / "fusionrank.zip"), "data": small_slice(movielens, tmp / "raw")}


@pytest.fixture(scope="session")
def night_store(request):
    """Where the cluster nights keep inputs and storage.root: the object store (moto's
    S3 server); with FUSIONRANK_CLUSTER_STORE=local, a local folder every process of
    the cluster sees (None)."""
    if os.environ.get("FUSIONRANK_CLUSTER_STORE", "s3") == "local":
        return None
    return request.getfixturevalue("object_store")


@pytest.fixture(scope="session")
def rs_night(cluster, night_inputs, night_store):
    """One clean night with the delta-rs engine: the reference the other nights equal."""
    from tests.cluster.night import deployment, project_files

    dep = deployment(cluster, night_inputs, "delta_rs", "delta-rs", night_store)
    project = project_files()
    seconds = dep.run_night()
    print(f"\ndelta-rs night on the cluster: {seconds} (total {sum(seconds.values()):.0f} s)")
    return {"dep": dep, "frames": dep.snapshot(), "versions": dep.versions(), "seconds": seconds,
            "project_before": project}
