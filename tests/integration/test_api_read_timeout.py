"""Slow clients against a real API server on a real socket: headers or a body sent a byte at
a time are cut off after NOETL_API_READ_TIMEOUT; normal requests and event streams that
last longer than it are not."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from actors.mesh import Mesh
from noetl.api.server import ApiServer
from noetl.client import Client
from tests.support.http_api import HttpApi
from tests.support.playbooks import write_playbook as write

READ_TIMEOUT = 1.0
DRIP = 0.2  # seconds between two bytes of a slow client
GIVE_UP = 30.0  # a slow client still connected after this long was never cut off


@pytest.fixture
async def server(client: Client) -> AsyncIterator[ApiServer]:
    api = ApiServer(client, host="127.0.0.1", port=0, read_timeout=READ_TIMEOUT)
    await api.start()
    try:
        yield api
    finally:
        await api.stop()


async def drip(server: ApiServer, head: bytes, slow: bytes) -> tuple[bytes, float]:
    """Send `head` at once, then `slow` one byte every DRIP seconds until the server closes
    the connection; return what the server answered and how many seconds `slow` lasted."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    loop = asyncio.get_running_loop()
    began = loop.time()
    answer = asyncio.ensure_future(reader.read())  # until the server closes
    try:
        writer.write(head)
        for byte in slow:
            if answer.done() or loop.time() - began > GIVE_UP:
                break
            writer.write(bytes([byte]))
            try:
                await writer.drain()
            except ConnectionError:
                break
            await asyncio.wait({answer}, timeout=DRIP)
        received = await asyncio.wait_for(answer, GIVE_UP)
        return received, loop.time() - began
    except ConnectionError:
        return b"", loop.time() - began
    finally:
        answer.cancel()
        writer.close()


async def test_headers_sent_slowly_are_cut_off(server: ApiServer) -> None:
    head = b"GET /health HTTP/1.1\r\nHost: localhost\r\n"
    # Enough bytes for two minutes of dripping: never a complete request in time.
    slow = b"X-Slow: " + b"a" * int(120 / DRIP) + b"\r\n\r\n"
    received, lasted = await drip(server, head, slow)
    assert received == b""  # closed without an answer: the request never completed
    assert lasted < GIVE_UP


async def test_a_body_sent_slowly_is_answered_408_and_cut_off(server: ApiServer) -> None:
    body = json.dumps({"path": "nothing/here", "workload": {"pad": "p" * 400}}).encode()
    head = (
        b"POST /api/executions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n"
    )
    received, lasted = await drip(server, head, body)
    assert received.startswith(b"HTTP/1.1 408 "), received[:200]
    assert b"did not arrive within 1 s" in received
    assert lasted < GIVE_UP


async def test_a_body_shorter_than_its_length_is_answered_408(server: ApiServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(
            b"POST /api/executions HTTP/1.1\r\nHost: localhost\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
        )
        received = await asyncio.wait_for(reader.read(), GIVE_UP)
    finally:
        writer.close()
    assert received.startswith(b"HTTP/1.1 408 "), received[:200]


async def test_normal_requests_and_long_event_streams_are_not_cut(
    client: Client, mesh: Mesh, server: ApiServer, api: HttpApi, tmp_path: Path
) -> None:
    seconds = 4 * READ_TIMEOUT
    path = write(
        tmp_path, "slow_call", f'- step: start\n  tool: {{kind: http, url: "{api.url}/slow"}}\n'
    )
    text = path.read_text().replace("/slow", f"/slow?seconds={seconds}")
    base = f"http://127.0.0.1:{server.port}"
    async with aiohttp.ClientSession() as session:
        reply = await session.post(
            f"{base}/api/playbooks", data=text, headers={"Content-Type": "application/yaml"}
        )
        assert reply.status == 201, await reply.text()
        started = await session.post(f"{base}/api/executions", json={"path": "slow_call"})
        assert started.status in (200, 201, 202), await started.text()
        eid = (await started.json())["execution_id"]
        loop = asyncio.get_running_loop()
        began = loop.time()
        stream = await session.get(f"{base}/api/executions/{eid}/stream")
        assert stream.status == 200
        lines = []
        async with asyncio.timeout(90):
            async for line in stream.content:
                lines.append(line.decode())
                if line.startswith(b"event: end"):
                    lines.append((await stream.content.readline()).decode())
                    break
        assert loop.time() - began > 2 * READ_TIMEOUT  # the stream outlived the read timeout
        end = json.loads(lines[-1].removeprefix("data: "))
        assert end["status"] == "completed", end
        # The same keep-alive connection serves another request after the stream.
        health = await session.get(f"{base}/health")
        assert health.status == 200
