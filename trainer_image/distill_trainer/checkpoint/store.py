"""Where checkpoints live: one small interface, two backends (a local or mounted directory, S3).

    store = open_store("s3://bucket/prefix")     # or "/mnt/ckpt/job", "file:///mnt/ckpt/job"
    store.write_bytes("global_step_4/manifest.json", data)

Keys are `/`-separated paths relative to the store's URI. Writers that produce many files (the
actor's `save_pretrained`) fill a local directory and hand it over with `writable_dir`: for a
local store that directory *is* the destination (no copy of multi-GB weights), for S3 it is a
temporary one uploaded on exit.

S3 goes through boto3: the endpoint comes from AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL (MinIO and
other S3-compatible stores; path-style addressing then), credentials from boto3's usual chain (the
environment, i.e. the Secret named by checkpoint.secretRef, or the pod's service account), retries
with exponential backoff from botocore's "standard" mode, and multipart transfers for files over
`multipart_threshold`. Every S3 failure surfaces as one `CheckpointStoreError` naming the bucket.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)

MIB = 1 << 20
S3_MAX_ATTEMPTS = 8  # botocore "standard" retries: exponential backoff with jitter, ≤ 20 s apart


class CheckpointError(ValueError):
    """A checkpoint that cannot be written, read or resumed from; the message says which."""


class CheckpointStoreError(CheckpointError):
    """The store itself fails: unreachable, wrong credentials, missing bucket."""


class CheckpointStore(Protocol):
    uri: str

    def uri_of(self, key: str) -> str: ...

    def local_path(self, key: str) -> Path | None:
        """The local path of `key` when the store is a directory, else None."""

    def write_bytes(self, key: str, data: bytes) -> None:
        """Write one object; a reader sees either nothing or all of `data`."""

    def read_bytes(self, key: str) -> bytes:
        """The object's content; FileNotFoundError when there is none."""

    def upload_dir(self, local: Path, prefix: str) -> None: ...

    def download_dir(self, prefix: str, local: Path) -> None: ...

    def list_dirs(self) -> list[str]:
        """Names of the top-level 'directories' (key prefixes) of the store."""

    def list_files(self, prefix: str) -> dict[str, int]:
        """Every file under `prefix/`: path relative to it → size in bytes."""

    def delete(self, prefix: str) -> None:
        """Remove everything under `prefix/` (nothing there is not an error)."""

    def remove(self, key: str) -> None:
        """Remove one object (a missing one is not an error)."""


def open_store(uri: str, check: bool = True, **s3_options: Any) -> CheckpointStore:
    """The store for a local path, `file://` path or `s3://bucket/prefix` URI.

    `check` makes sure the store is usable now (the S3 bucket exists and the credentials work),
    so a misconfigured job fails at start-up rather than at its first checkpoint."""
    if uri.startswith("s3://"):
        return S3Store(uri, check=check, **s3_options)
    if "://" in uri and not uri.startswith("file://"):
        raise CheckpointStoreError(
            f"checkpoint.uri: {uri!r}: only s3:// URIs and local or mounted paths are supported"
        )
    store = LocalStore(Path(uri.removeprefix("file://")))
    if check:
        try:
            store.root.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise CheckpointStoreError(
                f"checkpoint.uri {uri}: cannot create the directory ({err.strerror})"
            ) from None
    return store


def join_uri(uri: str, key: str) -> str:
    if not uri:
        return key
    return f"{uri.rstrip('/')}/{key}" if key else uri.rstrip("/")


def split_uri(uri: str) -> tuple[str, str]:
    """`s3://b/p/global_step_4/` → ("s3://b/p", "global_step_4")."""
    parent, _, name = uri.rstrip("/").rpartition("/")
    return parent, name


@contextmanager
def writable_dir(store: CheckpointStore, prefix: str) -> Iterator[Path]:
    """A directory to fill; its files are `prefix/…` in the store once the block exits."""
    local = store.local_path(prefix)
    if local is not None:
        local.mkdir(parents=True, exist_ok=True)
        yield local
        return
    with tempfile.TemporaryDirectory(prefix="distill-ckpt-") as tmp:
        yield Path(tmp)
        store.upload_dir(Path(tmp), prefix)


@contextmanager
def readable_dir(store: CheckpointStore, prefix: str) -> Iterator[Path]:
    """A local directory holding the files under `prefix/` for the length of the block."""
    local = store.local_path(prefix)
    if local is not None:
        if not local.is_dir():
            raise FileNotFoundError(f"{store.uri_of(prefix)} does not exist")
        yield local
        return
    with tempfile.TemporaryDirectory(prefix="distill-ckpt-") as tmp:
        store.download_dir(prefix, Path(tmp))
        yield Path(tmp)


class LocalStore:
    """A directory on a local disk or a mounted volume (PVC)."""

    def __init__(self, root: Path) -> None:
        self.root = root.absolute()  # roles in other working directories see the same place
        self.uri = str(self.root)

    def uri_of(self, key: str) -> str:
        return str(self.root / key) if key else self.uri

    def local_path(self, key: str) -> Path:
        return self.root / key

    def write_bytes(self, key: str, data: bytes) -> None:
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
        with partial.open("wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial, path)  # atomic on POSIX: a reader never sees half a file

    def read_bytes(self, key: str) -> bytes:
        return (self.root / key).read_bytes()

    def upload_dir(self, local: Path, prefix: str) -> None:
        if local.absolute() != self.root / prefix:
            shutil.copytree(local, self.root / prefix, dirs_exist_ok=True)

    def download_dir(self, prefix: str, local: Path) -> None:
        shutil.copytree(self.root / prefix, local, dirs_exist_ok=True)

    def list_dirs(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir())

    def list_files(self, prefix: str) -> dict[str, int]:
        base = self.root / prefix
        if not base.is_dir():
            return {}
        return {
            p.relative_to(base).as_posix(): p.stat().st_size
            for p in base.rglob("*")
            if p.is_file() and ".partial-" not in p.name
        }

    def delete(self, prefix: str) -> None:
        shutil.rmtree(self.root / prefix, ignore_errors=True)

    def remove(self, key: str) -> None:
        (self.root / key).unlink(missing_ok=True)


class S3Store:
    """`s3://bucket/prefix` through boto3 (AWS, MinIO or any S3-compatible endpoint)."""

    def __init__(
        self,
        uri: str,
        check: bool = True,
        multipart_threshold: int = 64 * MIB,
        multipart_chunksize: int = 64 * MIB,
    ) -> None:
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        self.uri = uri.rstrip("/")
        self.bucket, _, prefix = self.uri.removeprefix("s3://").partition("/")
        if not self.bucket:
            raise CheckpointStoreError(f"checkpoint.uri: {uri!r} must look like s3://bucket/prefix")
        self.prefix = prefix.strip("/")
        self.endpoint = (
            os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None
        )
        config = Config(
            retries={"mode": "standard", "max_attempts": S3_MAX_ATTEMPTS},
            connect_timeout=10,
            read_timeout=120,
            # MinIO and most S3-compatible stores do not resolve bucket.host names.
            s3={"addressing_style": "path"} if self.endpoint else None,
        )
        # A session of its own: credentials are read from the environment now, not cached from
        # whatever the process-wide default session saw first.
        session = boto3.session.Session()
        self.client = session.client("s3", endpoint_url=self.endpoint, config=config)
        self.transfer = TransferConfig(
            multipart_threshold=multipart_threshold,
            multipart_chunksize=multipart_chunksize,
            max_concurrency=8,
        )
        if check:
            with self._errors("check access to"):
                self.client.head_bucket(Bucket=self.bucket)

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}".lstrip("/") if key else self.prefix

    def uri_of(self, key: str) -> str:
        return join_uri(self.uri, key)

    def local_path(self, key: str) -> None:
        return None

    def write_bytes(self, key: str, data: bytes) -> None:
        with self._errors("write", key):
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def read_bytes(self, key: str) -> bytes:
        with self._errors("read", key):
            try:
                response = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
            except self.client.exceptions.NoSuchKey:
                raise FileNotFoundError(f"{self.uri_of(key)} does not exist") from None
            return response["Body"].read()

    def upload_dir(self, local: Path, prefix: str) -> None:
        for path in sorted(p for p in local.rglob("*") if p.is_file()):
            key = join_uri(prefix, path.relative_to(local).as_posix())
            with self._errors("upload", key):
                self.client.upload_file(
                    str(path), self.bucket, self._key(key), Config=self.transfer
                )

    def download_dir(self, prefix: str, local: Path) -> None:
        files = self.list_files(prefix)
        if not files:
            raise FileNotFoundError(f"{self.uri_of(prefix)} holds no files")
        for relative in files:
            dest = local / relative
            dest.parent.mkdir(parents=True, exist_ok=True)
            key = join_uri(prefix, relative)
            with self._errors("download", key):
                self.client.download_file(
                    self.bucket, self._key(key), str(dest), Config=self.transfer
                )

    def _pages(self, prefix: str, **extra: Any) -> Iterator[dict[str, Any]]:
        paginator = self.client.get_paginator("list_objects_v2")
        with self._errors("list", prefix):
            yield from paginator.paginate(Bucket=self.bucket, Prefix=prefix, **extra)

    def list_dirs(self) -> list[str]:
        base = f"{self.prefix}/" if self.prefix else ""
        names = [
            common["Prefix"][len(base) :].rstrip("/")
            for page in self._pages(base, Delimiter="/")
            for common in page.get("CommonPrefixes", [])
        ]
        return sorted(names)

    def _objects(self, prefix: str) -> Iterator[dict[str, Any]]:
        for page in self._pages(f"{self._key(prefix)}/"):
            yield from page.get("Contents", [])

    def list_files(self, prefix: str) -> dict[str, int]:
        start = len(self._key(prefix)) + 1
        return {
            item["Key"][start:]: int(item["Size"])
            for item in self._objects(prefix)
            # "Create folder" in the AWS console (and Hadoop's S3A) leaves a `dir/` object: a
            # directory marker, not a file to download.
            if not item["Key"].endswith("/")
        }

    def delete(self, prefix: str) -> None:
        keys = [item["Key"] for item in self._objects(prefix)]  # the markers go too
        for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
            batch = [{"Key": key} for key in keys[start : start + 1000]]
            with self._errors("delete", prefix):
                self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
                )

    def remove(self, key: str) -> None:
        with self._errors("delete", key):
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    @contextmanager
    def _errors(self, action: str, key: str = "") -> Iterator[None]:
        """botocore's failures (after its retries) as one error naming the bucket and the fix."""
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        where = f"bucket {self.bucket!r} at {self.endpoint or 'AWS S3'}"
        try:
            yield
        except NoCredentialsError:
            raise CheckpointStoreError(
                f"checkpoint.uri {self.uri}: no S3 credentials to {action} {where}: set "
                "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (the Secret in checkpoint.secretRef) "
                "or give the pod's service account an S3 role"
            ) from None
        except ClientError as err:
            raise CheckpointStoreError(
                f"checkpoint.uri {self.uri}: cannot {action} {self.uri_of(key)} in {where}: "
                f"{_explain(err, names_an_object=bool(key))}"
            ) from None
        except BotoCoreError as err:
            raise CheckpointStoreError(
                f"checkpoint.uri {self.uri}: cannot {action} {self.uri_of(key)} in {where}: {err}"
            ) from None


def _explain(err: Any, names_an_object: bool = False) -> str:
    error = err.response.get("Error", {})
    code = str(error.get("Code", ""))
    status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    # A HEAD answers a bare 404 with no body: of the bucket, the bucket is missing; of an
    # object, the object (S3 names a missing bucket NoSuchBucket whenever it can).
    if code == "NoSuchBucket" or (code == "404" and not names_an_object):
        return "the bucket does not exist"
    if code in ("NoSuchKey", "404"):
        return "no such object"
    if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403") or (
        status == 403
    ):
        return (
            f"access denied ({code}): wrong credentials or no permission; check "
            "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (checkpoint.secretRef) or the service "
            "account's role"
        )
    return f"{code}: {error.get('Message') or err}"
