"""The one filesystem layer (pyarrow.fs) for everything that is not a Spark read or
write: executor-written Parquet, the Delta log walkers, index artifacts, run records,
reports, learned projections and model folders.

Every function takes a URI as `fusionrank.core.uri` keeps them (a local path, or
`s3://` / `s3a://` / `gs://` / `abfss://` / `hdfs://`). `filesystem(uri)` resolves it
once per (scheme, authority) and process: S3 (both `s3://` and `s3a://`) is pyarrow's
S3FileSystem with the endpoint from `AWS_ENDPOINT_URL` (path-style, http when the
endpoint is http) and credentials from the environment; other schemes go through
`pyarrow.fs.FileSystem.from_uri`.

Object stores have no atomic folder rename: `publish_dir` replaces a folder by
copying, and readers of an artifact key on a marker file written last (the index
manifest), so they see the old artifact or the new one.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import threading
import uuid
from dataclasses import dataclass
from urllib.parse import urlparse

import pyarrow.fs as pafs

from fusionrank.core import uri as uris
from fusionrank.core.errors import StorageError

_LOCK = threading.Lock()
_FILESYSTEMS: dict[tuple, pafs.FileSystem] = {}


@dataclass(frozen=True)
class Entry:
    path: str  # relative to the listed folder, '/'-separated
    size: int
    mtime: float  # seconds since the epoch (0 when the store does not say)


def _s3(environ=None) -> pafs.S3FileSystem:
    environ = os.environ if environ is None else environ
    endpoint = uris.s3_endpoint(environ)
    kwargs: dict = {}
    if endpoint:
        parsed = urlparse(endpoint)
        kwargs["endpoint_override"] = parsed.netloc or parsed.path
        kwargs["scheme"] = parsed.scheme or "https"
    region = environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION")
    if region:
        kwargs["region"] = region
    if environ.get("AWS_ACCESS_KEY_ID") and environ.get("AWS_SECRET_ACCESS_KEY"):
        kwargs.update(access_key=environ["AWS_ACCESS_KEY_ID"], secret_key=environ["AWS_SECRET_ACCESS_KEY"],
                      session_token=environ.get("AWS_SESSION_TOKEN"))
    return pafs.S3FileSystem(**kwargs)


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """(pyarrow FileSystem, path inside it) for `uri`."""
    kind = uris.scheme(uri)
    if kind in ("", "file"):
        return pafs.LocalFileSystem(), os.path.abspath(uris.local_path(uri))
    rest = str(uri)[len(kind) + 3:]
    key = (kind if kind not in uris.S3_SCHEMES else "s3", os.environ.get(uris.ENDPOINT_ENV))
    if kind in uris.S3_SCHEMES:
        with _LOCK:
            if key not in _FILESYSTEMS:
                _FILESYSTEMS[key] = _s3()
            return _FILESYSTEMS[key], rest.rstrip("/")
    try:
        fs, path = pafs.FileSystem.from_uri(str(uri))
    except Exception as exc:  # pyarrow raises ArrowInvalid / ArrowNotImplementedError
        raise StorageError(f"{uri}: pyarrow has no filesystem for {kind}:// here ({exc})") from exc
    return fs, path


def _info(uri: str) -> pafs.FileInfo:
    fs, path = filesystem(uri)
    return fs.get_file_info(path)


def exists(uri: str) -> bool:
    return _info(uri).type != pafs.FileType.NotFound


def is_dir(uri: str) -> bool:
    return _info(uri).type == pafs.FileType.Directory


def is_file(uri: str) -> bool:
    return _info(uri).type == pafs.FileType.File


def size(uri: str) -> int:
    info = _info(uri)
    if info.type != pafs.FileType.File:
        raise StorageError(f"{uri} is not a file")
    return int(info.size)


def _has_folders(uri: str) -> bool:
    """Local disks and HDFS have real folders; object stores only keys (creating a
    "folder" there writes a marker object: skipped)."""
    return uris.scheme(uri) in ("", "file", "hdfs", "viewfs")


def makedirs(uri: str) -> None:
    if _has_folders(uri):
        fs, path = filesystem(uri)
        fs.create_dir(path, recursive=True)


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    with fs.open_input_stream(path) as handle:
        return handle.read()


def read_text(uri: str) -> str:
    return read_bytes(uri).decode("utf-8")


def write_bytes(uri: str, data: bytes) -> None:
    """Write a whole file; a reader sees the old content or the new, never half
    (local: a temporary file renamed into place; object stores: one PUT)."""
    fs, path = filesystem(uri)
    if uris.is_local(uri):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{uuid.uuid4().hex[:8]}.tmp")
        with open(tmp, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
        return
    parent = path.rsplit("/", 1)[0]
    if parent and _has_folders(uri):
        fs.create_dir(parent, recursive=True)
    with fs.open_output_stream(path) as handle:
        handle.write(data)


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def listdir(uri: str) -> list[str]:
    """Names directly inside folder `uri` (empty when it does not exist)."""
    fs, path = filesystem(uri)
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return sorted(info.base_name for info in infos)


def list_files(uri: str) -> list[Entry]:
    """Every file under folder `uri`, recursively (empty when it does not exist)."""
    fs, path = filesystem(uri)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    base = path.rstrip("/").replace(os.sep, "/") + "/"
    out = []
    for info in infos:
        if info.type != pafs.FileType.File:
            continue
        full = info.path.replace(os.sep, "/")
        rel = full[len(base):] if full.startswith(base) else full
        mtime = info.mtime.timestamp() if info.mtime is not None else 0.0
        out.append(Entry(rel, int(info.size), mtime))
    return sorted(out, key=lambda e: e.path)


def delete(uri: str) -> None:
    """Remove a file or a folder with everything in it; nothing there is fine."""
    fs, path = filesystem(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.Directory:
        if uris.is_local(uri):
            shutil.rmtree(path, ignore_errors=True)
        else:
            fs.delete_dir(path)
            if not _has_folders(uri):
                _drop_markers(fs, path)
    elif info.type == pafs.FileType.File:
        fs.delete_file(path)


def _drop_markers(fs: pafs.FileSystem, path: str) -> None:
    """pyarrow keeps a deleted folder's parent "existing" with a marker object
    (`parent/`); on an object store that is litter: drop markers up to the first
    ancestor that holds real objects."""
    parent = path.rstrip("/").rsplit("/", 1)[0]
    while "/" in parent:  # never the bucket itself
        infos = fs.get_file_info(pafs.FileSelector(parent, allow_not_found=True))
        if infos or fs.get_file_info(parent).type == pafs.FileType.NotFound:
            return
        fs.delete_dir(parent)  # only its marker is left
        parent = parent.rsplit("/", 1)[0]


def copy_dir(src: str, dst: str) -> None:
    """Copy folder `src` to `dst` (any two filesystems)."""
    src_fs, src_path = filesystem(src)
    dst_fs, dst_path = filesystem(dst)
    if _has_folders(dst):
        dst_fs.create_dir(dst_path, recursive=True)
    pafs.copy_files(src_path, dst_path, source_filesystem=src_fs, destination_filesystem=dst_fs, use_threads=True)


def publish_dir(src: str, dst: str) -> None:
    """Move the finished folder `src` to `dst`, replacing what is there.

    Local: two renames (atomic for readers). Object stores: the old `dst` is removed
    and `src` copied in (readers key on a marker file written last)."""
    if uris.is_local(src) and uris.is_local(dst):
        src_path, dst_path = uris.local_path(src), uris.local_path(dst)
        old = None
        if os.path.exists(dst_path):
            old = os.path.join(os.path.dirname(dst_path), f".old-{os.path.basename(dst_path)}-{uuid.uuid4().hex[:8]}")
            os.replace(dst_path, old)
        os.replace(src_path, dst_path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return
    delete(dst)
    copy_dir(src, dst)
    delete(src)


def upload_file(local: str, dst: str) -> None:
    """Copy the local file `local` to `dst`."""
    if uris.is_local(dst):
        target = uris.local_path(dst)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if os.path.abspath(local) != os.path.abspath(target):
            shutil.copyfile(local, target)
        return
    fs, path = filesystem(dst)
    parent = path.rsplit("/", 1)[0]
    if parent and _has_folders(dst):
        fs.create_dir(parent, recursive=True)
    pafs.copy_files(os.path.abspath(local), path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)


def signature(uri: str) -> str:
    """A short digest of what is at `uri` (names, sizes, modification times): changes
    when the content is replaced, without reading it."""
    info = _info(uri)
    if info.type == pafs.FileType.File:
        listing = [(uris.name(uri), int(info.size), info.mtime.timestamp() if info.mtime else 0.0)]
    else:
        listing = [(e.path, e.size, e.mtime) for e in list_files(uri)]
    return hashlib.sha256(repr(listing).encode()).hexdigest()[:16]


def local_copy(uri: str, key: str, scratch: str | None = None) -> str:
    """A local folder holding a copy of folder `uri` (local URIs: the folder itself;
    a file URI: the path of its local copy).

    The copy lives in `scratch` (default: Spark's per-application scratch on an
    executor, else the temp dir) under a name made of `key` (e.g. an index version,
    so a new night never reads a stale copy), and is made once per host: several
    Python workers racing copy to private temp folders and the first rename wins."""
    if uris.is_local(uri):
        return uris.local_path(uri)
    where = hashlib.sha256(str(uri).encode()).hexdigest()[:12]
    safe = where + "-" + "".join(c if c.isalnum() or c in "-_." else "_" for c in key)
    target = os.path.join(cache_root(scratch), safe)
    single = is_file(uri)
    found = os.path.join(target, uris.name(uri)) if single else target
    if os.path.isdir(target):
        return found
    os.makedirs(os.path.dirname(target), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{safe}-", dir=os.path.dirname(target))
    try:
        if single:
            with open(os.path.join(tmp, uris.name(uri)), "wb") as handle:
                handle.write(read_bytes(uri))
        else:
            copy_dir(uri, tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not os.path.isdir(target):  # not a lost race: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return found


def cache_root(scratch: str | None = None) -> str:
    """Where this host keeps what it derives from stored artifacts (local copies,
    compiled models): `scratch` (default `scratch_root()`)/fusionrank-cache."""
    return os.path.join(scratch or scratch_root(), "fusionrank-cache")


def scratch_root() -> str:
    """Spark's per-application local scratch (executor or driver; removed when the
    application ends), else the temp dir."""
    try:
        from pyspark import SparkContext, SparkFiles, TaskContext

        if TaskContext.get() is not None or SparkContext._active_spark_context is not None:
            return SparkFiles.getRootDirectory()
    except Exception:  # outside Spark, or no SparkFiles on this worker
        pass
    return tempfile.gettempdir()


def mtime(uri: str) -> float:
    """Last modification of a file, seconds since the epoch (0 when the store does not say)."""
    info = _info(uri)
    return info.mtime.timestamp() if info.mtime is not None else 0.0


def relative(uri: str, base: str) -> str:
    """`uri` relative to folder `base`, '/'-separated (both as any scheme spells them:
    `s3a://b/x` and `s3://b/x` name the same object)."""
    full, root = uris.arrow_uri(str(uri)).replace(os.sep, "/"), uris.arrow_uri(str(base)).replace(os.sep, "/")
    root = root.rstrip("/") + "/"
    if not full.startswith(root):
        raise StorageError(f"{uri} is not inside {base}")
    return full[len(root):]


# -- Delta tables (deltalake) with the storage options of their URI: the one place ----------
def delta_table(uri: str, version: int | None = None):
    """`deltalake.DeltaTable` at `uri`, with the object-store options from the environment."""
    from deltalake import DeltaTable

    return DeltaTable(uris.arrow_uri(uri), version=version, storage_options=uris.delta_storage_options(uri))


def is_delta_table(uri: str) -> bool:
    from deltalake import DeltaTable

    return DeltaTable.is_deltatable(uris.arrow_uri(uri), storage_options=uris.delta_storage_options(uri))


@contextlib.contextmanager
def local_file(uri: str):
    """A local path holding file `uri` for the `with` block (local URIs: the file
    itself; others: a temporary copy, removed afterwards)."""
    if uris.is_local(uri):
        yield uris.local_path(uri)
        return
    folder = tempfile.mkdtemp(prefix="fusionrank-")
    try:
        path = os.path.join(folder, uris.name(uri))
        with open(path, "wb") as handle:
            handle.write(read_bytes(uri))
        yield path
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def local_dir_for(uri: str):
    """A local folder to write files into for the `with` block; afterwards (no error)
    its files are uploaded to folder `uri` (local URIs: the folder itself)."""
    if uris.is_local(uri):
        os.makedirs(uris.local_path(uri), exist_ok=True)
        yield uris.local_path(uri)
        return
    folder = tempfile.mkdtemp(prefix="fusionrank-")
    try:
        yield folder
        for entry in sorted(os.listdir(folder)):
            upload_file(os.path.join(folder, entry), uris.join(uri, entry))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
