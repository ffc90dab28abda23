"""Where `db prune --archive` writes pruned executions' events: a local directory, an S3
bucket (aioboto3) or a GCS bucket (gcloud-aio-storage), one JSONL object per execution.

Cloud credentials come from the environment, as for the AWS and gcloud tools themselves
(`AWS_*` / `~/.aws`, `AWS_ENDPOINT_URL`; `GOOGLE_APPLICATION_CREDENTIALS`,
`STORAGE_EMULATOR_HOST`). An object is written completely (a local file is synced to disk)
before `put` returns, so the events it holds can be deleted from the database after it.
"""

from __future__ import annotations

import asyncio
import gzip
import os
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Protocol

import msgspec

from noetl.errors import ArchiveError

__all__ = ["Archive", "encode_events", "object_name", "open_archive"]


class Archive(Protocol):
    """Stores one object by name under the archive's root."""

    async def put(self, name: str, data: bytes) -> None: ...


def object_name(execution_id: int, *, gzipped: bool) -> str:
    """The name an execution's events are archived under."""
    return f"{execution_id}.jsonl" + (".gz" if gzipped else "")


def encode_events(rows: list[dict[str, Any]], *, gzipped: bool) -> bytes:
    """One JSON document per event, a line each (gzip-compressed when asked)."""
    data = b"".join(msgspec.json.encode(row) + b"\n" for row in rows)
    return gzip.compress(data, compresslevel=6, mtime=0) if gzipped else data


class _Directory:
    def __init__(self, root: str) -> None:
        self.root = root

    def _write(self, name: str, data: bytes) -> None:
        root = Path(self.root).expanduser()
        root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=root, prefix=f".{name}.")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, root / name)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    async def put(self, name: str, data: bytes) -> None:
        try:
            await asyncio.to_thread(self._write, name, data)
        except OSError as exc:
            raise ArchiveError(f"cannot write the archive {self.root}/{name}: {exc}") from exc


class _S3:
    def __init__(self, client: Any, bucket: str, prefix: str) -> None:
        self.client, self.bucket, self.prefix = client, bucket, prefix

    async def put(self, name: str, data: bytes) -> None:
        key = self.prefix + name
        try:
            await self.client.put_object(Bucket=self.bucket, Key=key, Body=data)
        except Exception as exc:  # botocore's errors share no base worth naming
            raise ArchiveError(f"cannot write s3://{self.bucket}/{key}: {exc}") from exc


class _Gcs:
    def __init__(self, storage: Any, bucket: str, prefix: str) -> None:
        self.storage, self.bucket, self.prefix = storage, bucket, prefix

    async def put(self, name: str, data: bytes) -> None:
        key = self.prefix + name
        try:
            await self.storage.upload(self.bucket, key, data)
        except Exception as exc:  # aiohttp's and the API's errors alike
            raise ArchiveError(f"cannot write gs://{self.bucket}/{key}: {exc}") from exc


def _bucket(target: str) -> tuple[str, str]:
    bucket, _, prefix = target.split("://", 1)[1].partition("/")
    if not bucket:
        raise ArchiveError(f"archive {target!r} names no bucket")
    return bucket, (prefix.rstrip("/") + "/" if prefix.strip("/") else "")


@asynccontextmanager
async def open_archive(target: str) -> AsyncIterator[Archive]:
    """The archive at `target`: `s3://bucket/prefix`, `gs://bucket/prefix` or a directory."""
    if target.startswith("s3://"):
        import aioboto3  # slow to import: only an S3 archive pays for it

        bucket, prefix = _bucket(target)
        async with aioboto3.Session().client("s3") as client:
            yield _S3(client, bucket, prefix)
    elif target.startswith("gs://"):
        from gcloud.aio.storage import Storage

        bucket, prefix = _bucket(target)
        async with Storage() as storage:
            yield _Gcs(storage, bucket, prefix)
    elif "://" in target:
        raise ArchiveError(f"archive {target!r}: only s3://, gs:// or a directory")
    else:
        yield _Directory(target)
