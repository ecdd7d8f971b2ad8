"""Every path in fusionrank is a URI string (no pyarrow, no I/O here).

* A value with a scheme (`s3://`, `s3a://`, `gs://`, `abfss://`, `hdfs://`, ...) is kept
  as written (a trailing `/` dropped): never resolved against a local folder.
* `file:///abs/path` is the local path `/abs/path`.
* A local path is absolute: a relative one resolves against the project root.

Local paths stay plain strings (`/abs/path`), so local runs name and store exactly
what they did before. Where a path is handed to Spark, `spark_uri` qualifies it
(`file:///abs` for local, `s3a://` for S3) so Spark never resolves it against
`fs.defaultFS` (HDFS on YARN) while the rest of fusionrank uses the local disk.

Object-store credentials and endpoints never come from `conf/`. They come from the
environment (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
`AWS_SESSION_TOKEN`, `AWS_REGION`/`AWS_DEFAULT_REGION`) for pyarrow and delta-rs
(`delta_storage_options`), and from Spark/Hadoop conf (`spark.hadoop.fs.s3a.*`) for
Spark; `s3a_conf_from_env` fills the S3A endpoint keys from the same environment when
the Spark conf does not set them.
"""

from __future__ import annotations

import os
import posixpath
import re
from pathlib import Path
from urllib.parse import unquote, urlparse

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
S3_SCHEMES = ("s3", "s3a", "s3n")


def scheme(value: str) -> str:
    """The URI scheme in lower case ('' for a local path)."""
    match = _SCHEME.match(str(value))
    return match.group(1).lower() if match else ""


def is_local(value: str) -> bool:
    return scheme(value) in ("", "file")


def resolve(value, root: str | Path) -> str:
    """A config path as fusionrank keeps it: a URI kept as written, `file://` and local
    paths as absolute local paths (relative ones against `root`)."""
    text = str(value).strip()
    kind = scheme(text)
    if kind == "file":
        parsed = urlparse(text)
        if parsed.netloc not in ("", "localhost"):
            raise ValueError(f"{text!r}: a file:// URI names a local path (file:///abs/path), not host {parsed.netloc!r}")
        return os.path.normpath(unquote(parsed.path))
    if kind:
        rest = text[len(kind) + 3:]
        if not rest.strip("/"):
            raise ValueError(f"{text!r} names no bucket or folder")
        return text.rstrip("/")
    path = Path(text).expanduser()
    return str(path if path.is_absolute() else (Path(root) / path).resolve())


def local_path(value: str) -> str:
    """The local path of a local URI (plain path or file://)."""
    if scheme(value) == "file":
        return unquote(urlparse(value).path)
    if scheme(value):
        raise ValueError(f"{value} is not a local path")
    return str(value)


def join(base: str, *parts: str) -> str:
    """`base` / parts, with `/` for URIs and the OS separator for local paths."""
    parts = tuple(str(p).strip("/") if scheme(base) else str(p) for p in parts if str(p))
    if not scheme(base):
        return os.path.join(str(base), *parts)
    return "/".join([str(base).rstrip("/"), *parts])


def parent(value: str) -> str:
    if not scheme(value):
        return os.path.dirname(str(value).rstrip(os.sep)) or os.sep
    kind = scheme(value)
    rest = str(value)[len(kind) + 3:].rstrip("/")
    head = posixpath.dirname(rest)
    return f"{value[:len(kind)]}://{head}" if head else f"{value[:len(kind)]}://{rest}"


def name(value: str) -> str:
    return posixpath.basename(str(value).rstrip("/")) if scheme(value) else os.path.basename(str(value).rstrip(os.sep))


def is_root(value: str) -> bool:
    """True for `/`, `C:\\` and a bare bucket (`s3://bucket`): no folder named."""
    if not scheme(value):
        path = Path(value)
        return path == Path(path.anchor)
    rest = str(value)[len(scheme(value)) + 3:].strip("/")
    return "/" not in rest


def spark_uri(value: str) -> str:
    """The fully qualified form Spark gets: `file:///abs` for local paths, `s3a://` for
    every S3 scheme (hadoop-aws registers only s3a), other URIs as they are."""
    kind = scheme(value)
    if kind in ("", "file"):
        return "file://" + os.path.abspath(local_path(value))
    if kind in ("s3", "s3n"):
        return "s3a://" + str(value)[len(kind) + 3:]
    return str(value)


def arrow_uri(value: str) -> str:
    """The form pyarrow and delta-rs get: local paths plain, `s3://` for every S3 scheme."""
    kind = scheme(value)
    if kind in ("", "file"):
        return local_path(value)
    if kind in ("s3a", "s3n"):
        return "s3://" + str(value)[len(kind) + 3:]
    return str(value)


def needs_s3a(*values: str) -> bool:
    return any(scheme(v) in S3_SCHEMES for v in values if v)


# -- object-store settings from the environment (the one place) ---------------------------
ENDPOINT_ENV = "AWS_ENDPOINT_URL"
_AWS_PASSED = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_DEFAULT_REGION",
               "AWS_ALLOW_HTTP", "AWS_S3_ALLOW_UNSAFE_RENAME", "AWS_S3_LOCKING_PROVIDER", "AWS_CONDITIONAL_PUT",
               "AWS_FORCE_PATH_STYLE", "AWS_VIRTUAL_HOSTED_STYLE_REQUEST", "AWS_ENDPOINT_URL_S3")


def s3_endpoint(environ=None) -> str | None:
    environ = os.environ if environ is None else environ
    return environ.get("AWS_ENDPOINT_URL_S3") or environ.get(ENDPOINT_ENV) or None


def delta_storage_options(value: str, environ=None) -> dict[str, str] | None:
    """deltalake `storage_options` for the table at `value` (None for local tables and
    for stores whose own environment variables delta-rs reads as they are).

    S3: the `AWS_*` variables that are set, plus, with a custom endpoint
    (`AWS_ENDPOINT_URL`, e.g. MinIO, moto, Ceph), path-style requests and
    `AWS_ALLOW_HTTP=true` for an `http://` endpoint. Writes without a locking
    provider need `AWS_S3_ALLOW_UNSAFE_RENAME=true` (one writer per table, which is
    how a fusionrank night writes); it is the default unless the environment names
    `AWS_S3_LOCKING_PROVIDER` or `AWS_CONDITIONAL_PUT`."""
    environ = os.environ if environ is None else environ
    if scheme(value) not in S3_SCHEMES:
        return None
    options = {key: environ[key] for key in _AWS_PASSED if environ.get(key)}
    endpoint = s3_endpoint(environ)
    if endpoint:
        options["AWS_ENDPOINT_URL"] = endpoint
        options.setdefault("AWS_FORCE_PATH_STYLE", "true")
        if endpoint.startswith("http://"):
            options.setdefault("AWS_ALLOW_HTTP", "true")
    if "AWS_REGION" not in options and "AWS_DEFAULT_REGION" in options:
        options["AWS_REGION"] = options["AWS_DEFAULT_REGION"]
    if "AWS_S3_LOCKING_PROVIDER" not in options and "AWS_CONDITIONAL_PUT" not in options:
        options.setdefault("AWS_S3_ALLOW_UNSAFE_RENAME", "true")
    return options


def s3a_conf_from_env(conf: dict[str, str], environ=None) -> dict[str, str]:
    """`spark.hadoop.fs.s3a.*` keys for a custom S3 endpoint named by the environment,
    for the keys the Spark conf leaves unset (the Spark conf always wins)."""
    environ = os.environ if environ is None else environ
    endpoint = s3_endpoint(environ)
    out: dict[str, str] = {}
    if not endpoint:
        return out
    wanted = {
        "spark.hadoop.fs.s3a.endpoint": endpoint,
        "spark.hadoop.fs.s3a.path.style.access": "true",
        "spark.hadoop.fs.s3a.connection.ssl.enabled": str(endpoint.startswith("https://")).lower(),
    }
    region = environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION")
    if region:
        wanted["spark.hadoop.fs.s3a.endpoint.region"] = region
    if environ.get("AWS_ACCESS_KEY_ID"):
        wanted["spark.hadoop.fs.s3a.aws.credentials.provider"] = \
            "software.amazon.awssdk.auth.credentials.EnvironmentVariableCredentialsProvider"
    for key, val in wanted.items():
        if key not in conf:
            out[key] = val
    return out
