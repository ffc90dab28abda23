"""Local stand-ins for S3 (moto's server) and GCS (gcp-storage-emulator), with fixtures.

Both run in this process, in threads, on 127.0.0.1 on free ports. The session fixtures
`moto_server` and `gcs_emulator` start one of each; the per-test fixtures `aws_env` and
`gcs_env` point the AWS / gcloud-aio clients at them through the environment (fake keys,
`AWS_ENDPOINT_URL`, `STORAGE_EMULATOR_HOST`) and empty them before / after the test. The
functions are `<name>_fixture` (so importing them shadows no argument): register them in a
conftest with `from tests.support.cloud import aws_env_fixture, gcs_emulator_fixture,
gcs_env_fixture, moto_server_fixture`.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import aioboto3
import aiohttp
import pytest
from gcloud.aio.storage import Storage
from gcp_storage_emulator.server import Server, create_server
from moto.server import ThreadedMotoServer

from noetl.local import free_port

#: What `aws_env` sets: fake keys, so nothing can reach a real account.
AWS_TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
#: What `aws_env` removes, so the user's AWS setup cannot leak into a test.
_AWS_UNSET = (
    "AWS_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ENDPOINT_URL_S3",
    "AWS_REGION",
)
GCS_TEST_PROJECT = "noetl-test"


@dataclass
class MotoServer:
    """A running moto server; `endpoint_url` is where S3 (and every AWS API) answers."""

    server: ThreadedMotoServer
    endpoint_url: str

    def env(self) -> dict[str, str]:
        """The environment that points boto clients at this server."""
        return {**AWS_TEST_ENV, "AWS_ENDPOINT_URL": self.endpoint_url}

    def reset(self) -> None:
        """Forget every bucket and object (moto's state is shared by the whole process)."""
        request = urllib.request.Request(f"{self.endpoint_url}/moto-api/reset", method="POST")
        with urllib.request.urlopen(request, timeout=10):
            pass

    def stop(self) -> None:
        """Stop serving and close the listening socket."""
        self.server.stop()
        # ThreadedMotoServer.stop() leaves the socket bound; close it as well.
        if self.server._server is not None:
            self.server._server.server_close()


@dataclass
class GcsEmulator:
    """A running gcp-storage-emulator (in memory); `host` is its base URL."""

    server: Server
    host: str

    def env(self) -> dict[str, str]:
        """The environment that points gcloud-aio-storage at this emulator."""
        return {"STORAGE_EMULATOR_HOST": self.host}

    def wipe(self) -> None:
        """Delete every bucket and object."""
        self.server.wipe()

    def stop(self) -> None:
        """Stop serving and close the listening socket."""
        self.server.stop()


def start_moto_server() -> MotoServer:
    """Start moto's server on 127.0.0.1 on a port the OS picks at bind time."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return MotoServer(server=server, endpoint_url=f"http://{host}:{port}")


def start_gcs_emulator() -> GcsEmulator:
    """Start gcp-storage-emulator, in memory, on 127.0.0.1 on a free port."""
    port = free_port()
    server = create_server("127.0.0.1", port, in_memory=True)
    server.start()
    return GcsEmulator(server=server, host=f"http://127.0.0.1:{port}")


async def put_s3_object(bucket: str, key: str, body: bytes | str) -> None:
    """Store `body` at s3://bucket/key (creating the bucket), through the environment's S3."""
    async with aioboto3.Session().client("s3") as client:
        existing = await client.list_buckets()
        if bucket not in {entry["Name"] for entry in existing.get("Buckets", [])}:
            await client.create_bucket(Bucket=bucket)
        await client.put_object(
            Bucket=bucket, Key=key, Body=body.encode() if isinstance(body, str) else body
        )


async def create_gcs_bucket(emulator: GcsEmulator, bucket: str) -> None:
    """Create the bucket `bucket` in the emulator (nothing happens if it exists)."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{emulator.host}/storage/v1/b",
            params={"project": GCS_TEST_PROJECT},
            json={"name": bucket},
        ) as resp,
    ):
        if resp.status not in (200, 409):  # 409: the bucket exists already
            raise RuntimeError(f"creating bucket {bucket}: HTTP {resp.status}")


async def put_gcs_object(emulator: GcsEmulator, bucket: str, name: str, body: bytes | str) -> None:
    """Store `body` at gs://bucket/name in the emulator (creating the bucket).

    The emulator cannot store an empty object: use `create_gcs_bucket` for just a bucket.
    """
    await create_gcs_bucket(emulator, bucket)
    async with Storage(api_root=emulator.host) as storage:
        await storage.upload(bucket, name, body)


@pytest.fixture(scope="session", name="moto_server")
def moto_server_fixture() -> Iterator[MotoServer]:
    """One moto server for the test session."""
    server = start_moto_server()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(name="aws_env")
def aws_env_fixture(
    moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> Iterator[MotoServer]:
    """AWS clients of this test talk to the (emptied) moto server with fake keys."""
    for name in _AWS_UNSET:
        monkeypatch.delenv(name, raising=False)
    # No ~/.aws files either: only the fake keys count.
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/noetl-test/aws-config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/noetl-test/aws-credentials")
    for name, value in moto_server.env().items():
        monkeypatch.setenv(name, value)
    moto_server.reset()
    yield moto_server


@pytest.fixture(scope="session", name="gcs_emulator")
def gcs_emulator_fixture() -> Iterator[GcsEmulator]:
    """One GCS emulator for the test session."""
    emulator = start_gcs_emulator()
    try:
        yield emulator
    finally:
        emulator.stop()


@pytest.fixture(name="gcs_env")
def gcs_env_fixture(
    gcs_emulator: GcsEmulator, monkeypatch: pytest.MonkeyPatch
) -> Iterator[GcsEmulator]:
    """gcloud-aio clients of this test talk to the GCS emulator, emptied after the test."""
    for name, value in gcs_emulator.env().items():
        monkeypatch.setenv(name, value)
    try:
        yield gcs_emulator
    finally:
        gcs_emulator.wipe()
