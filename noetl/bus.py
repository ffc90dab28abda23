"""NATS JetStream: streams, subjects, consumers, and publishing with dedup ids.

Only features of nats-server 2.9 are used: work-queue streams, durable push consumers with
queue groups, durable pull consumers (fed by `bus_pull.Puller`), `Nats-Msg-Id` dedup and core
request/reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

import msgspec
import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BadRequestError, NotFoundError, ServiceUnavailableError

from noetl.bus_keeper import Keeper, keeper_subject
from noetl.bus_publish import Publisher
from noetl.bus_pull import Puller
from noetl.errors import ConfigError

log = logging.getLogger("noetl.bus")

EXEC_STREAM: Final = "NOETL_EXEC"
CMD_STREAM: Final = "NOETL_CMD"
START_STREAM: Final = "NOETL_START"
DEAD_STREAM: Final = "NOETL_DEAD"
START_SUBJECT: Final = "noetl.start"
CATALOG_REGISTER: Final = "noetl.catalog.register"
CATALOG_GET: Final = "noetl.catalog.get"
PING_PREFIX: Final = "noetl.mesh.ping"
# JetStream's "consumer name already in use" and "consumer already exists".
_CONSUMER_EXISTS: Final = frozenset({10013, 10148})
# Tries of a stream or consumer declaration, about 25 s in all (see `_settled`).
_SETUP_ATTEMPTS: Final = 8
# Longest wait before a message whose handling failed is delivered again (seconds).
_MAX_REDELIVERY_DELAY: Final = 30.0
# Unacknowledged messages of one pulled consumer (a runner pool) across all its processes;
# each process also pulls no more than its own `max_in_flight`.
POOL_MAX_ACK_PENDING: Final = 10_000


# The work-queue streams: each holds a keeper (see `bus_keeper`).
WORK_QUEUES: Final = (EXEC_STREAM, CMD_STREAM, START_STREAM)


def exec_subject(partition: int) -> str:
    """The mailbox subject of one coordinator partition."""
    return f"noetl.exec.{partition}"


def cmd_subject(pool: str) -> str:
    """The work queue subject of a runner pool."""
    return f"noetl.cmd.{pool}"


def pool_ping_subject(pool: str) -> str:
    """Core subject every live runner of `pool` answers (no responders: none is live)."""
    return f"{PING_PREFIX}.runner.{pool}"


def events_subject(execution_id: int) -> str:
    """Core subject where committed events of one execution are announced to watchers."""
    return f"noetl.events.{execution_id}"


def milestones_subject(execution_id: int) -> str:
    """Core subject repeating the announcements of an execution's start, end and failed
    steps (what `up` logs, without receiving every step's announcement)."""
    return f"noetl.milestones.{execution_id}"


CANCEL_PREFIX: Final = "noetl.cancel"
#: The payload of `cancel_subject(id)` when the execution ended with nothing in flight:
#: runners release what they keep for it and stop nothing (an empty payload stops its work).
END_NOTICE: Final = b"ended"


def cancel_subject(execution_id: int) -> str:
    """Core subject telling runners to stop the commands of an execution that ended."""
    return f"{CANCEL_PREFIX}.{execution_id}"


def partition_of(execution_id: int, partitions: int) -> int:
    """Which partition owns an execution: a stable hash, independent of the id's layout."""
    digest = hashlib.blake2b(execution_id.to_bytes(8, "big", signed=True), digest_size=8)
    return int.from_bytes(digest.digest(), "big") % partitions


Handler = Callable[[Msg], Awaitable[None]]
T = TypeVar("T")


class Bus:
    """A connection to NATS with the runtime's streams declared."""

    def __init__(
        self,
        nc: Client,
        js: JetStreamContext,
        *,
        ack_wait: float,
        dedup_window: float,
        replicas: int = 1,
    ) -> None:
        self.nc = nc
        self.js = js
        self.ack_wait = ack_wait
        self.dedup_window = dedup_window
        self.replicas = replicas
        self._subs: list[Subscription] = []
        self._pullers: list[Puller] = []
        self._keeper: Keeper | None = None
        self._publisher = Publisher(nc)

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        name: str = "noetl",
        ack_wait: float = 30.0,
        dedup_window: float = 120.0,
        replicas: int = 1,
    ) -> Bus:
        """Connect and make sure the streams exist, each with `replicas` copies.

        `url` may list the servers of a cluster, comma-separated: the client connects to one
        and moves to another when it goes away.
        """
        servers = [server.strip() for server in url.split(",") if server.strip()]
        bus: Bus | None = None

        async def reconnected() -> None:
            # The server may have forgotten the pull requests: the pullers ask anew at once.
            for puller in bus._pullers if bus is not None else ():
                puller.wake()

        try:
            nc = await nats.connect(
                servers,
                name=name,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.5,
                connect_timeout=5,
                reconnected_cb=reconnected,
            )
        except (TimeoutError, OSError, nats.errors.NoServersError) as exc:
            raise ConfigError(f"cannot connect to NATS at {url}: {exc}") from exc
        bus = cls(
            nc, nc.jetstream(), ack_wait=ack_wait, dedup_window=dedup_window, replicas=replicas
        )
        try:
            await bus.ensure_streams()
        except BaseException:
            await nc.close()
            raise
        return bus

    async def ensure_streams(self) -> None:
        """Create the streams, or update them to the expected configuration."""
        for name, subjects, retention in (
            (EXEC_STREAM, ["noetl.exec.*"], RetentionPolicy.WORK_QUEUE),
            (CMD_STREAM, ["noetl.cmd.*"], RetentionPolicy.WORK_QUEUE),
            (START_STREAM, [START_SUBJECT], RetentionPolicy.WORK_QUEUE),
            (DEAD_STREAM, ["noetl.dead.>"], RetentionPolicy.LIMITS),
        ):
            if name in WORK_QUEUES:
                subjects.append(keeper_subject(name))
            config = StreamConfig(
                name=name,
                subjects=subjects,
                retention=retention,
                storage=StorageType.FILE,
                duplicate_window=self.dedup_window,
                max_age=7 * 86400 if retention == RetentionPolicy.LIMITS else None,
                num_replicas=self.replicas,
            )
            await _settled(functools.partial(self._declare, config))

    async def _declare(self, config: StreamConfig) -> None:
        try:
            await self.js.add_stream(config)
        except BadRequestError:
            await self.js.update_stream(config)

    def keep_warm(self) -> None:
        """Keep a keeper in each work-queue stream from now until `stop_consuming` (see
        `bus_keeper`); the coordinator host does, one process per mesh is enough."""
        if self._keeper is None:
            self._keeper = Keeper(self.js, WORK_QUEUES)
            self._keeper.start()

    async def commands_queued(self) -> int:
        """Commands in the runners' work queue, waiting or being run (keepers apart)."""
        info = await self.js.stream_info(CMD_STREAM, subjects_filter="noetl.cmd.*")
        return sum((info.state.subjects or {}).values())

    async def publish(self, subject: str, data: bytes, msg_id: str) -> None:
        """Publish to JetStream and wait for the server's ack; dedup by `msg_id`."""
        await self._publisher.publish(subject, data, msg_id)

    async def announce(self, subject: str, data: bytes) -> None:
        """Fire-and-forget publish on core NATS (live notifications)."""
        await self.nc.publish(subject, data)

    async def consume(
        self,
        stream: str,
        subject: str,
        durable: str,
        handler: Handler,
        *,
        max_in_flight: int,
        max_deliver: int = -1,
    ) -> None:
        """Deliver messages of `subject` to `handler` through a durable push consumer.

        Processes sharing `durable` share the work (queue group). Messages are pushed as
        soon as they are stored, with at most `max_in_flight` unacknowledged at a time.
        """
        config = ConsumerConfig(
            durable_name=durable,
            deliver_group=durable,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=self.ack_wait,
            max_ack_pending=max_in_flight,
            max_deliver=max_deliver,
            filter_subject=subject,
        )
        sub = await _settled(
            lambda: self.js.subscribe(
                subject,
                queue=durable,
                durable=durable,
                stream=stream,
                cb=handler,
                manual_ack=True,
                config=config,
                pending_msgs_limit=max(1024, max_in_flight * 4),
            )
        )
        self._subs.append(sub)

    async def pull(
        self, stream: str, subject: str, durable: str, handler: Handler, *, max_in_flight: int
    ) -> None:
        """Hand messages of `subject` to `handler`, at most `max_in_flight` at a time in this
        process, through a durable pull consumer shared by every process naming `durable`.

        A message is pulled only when a slot is free, so whatever this process cannot take
        yet stays in JetStream for the others (or for later): nothing queues in memory. A
        slot is released when `handler` returns, so it must return when the work is done.
        Pull requests are kept on the server for the free slots (`bus_pull.Puller`), so a
        message is taken as soon as it is stored, without a request of its own.
        """
        config = ConsumerConfig(
            durable_name=durable,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=self.ack_wait,
            max_ack_pending=POOL_MAX_ACK_PENDING,
            max_deliver=-1,
            filter_subject=subject,
        )
        await _settled(lambda: self._ensure_pull_consumer(stream, config))
        puller = Puller(self.nc, stream, durable, handler, slots=max_in_flight)
        self._pullers.append(puller)
        await puller.start()

    async def _ensure_pull_consumer(self, stream: str, config: ConsumerConfig) -> None:
        """Create the pull consumer `config.durable_name` unless it exists. A push consumer
        left under that name by an older runtime is deleted first: its unacked messages stay
        in the work queue and go to the pull consumer that replaces it."""
        durable = config.durable_name or ""
        try:
            info = await self.js.consumer_info(stream, durable)
        except NotFoundError:
            pass
        else:
            if not info.config.deliver_subject:
                return
            with contextlib.suppress(NotFoundError):
                await self.js.delete_consumer(stream, durable)
        await self.js.add_consumer(stream, config)

    async def serve(self, subject: str, handler: Handler, *, queue: str) -> None:
        """Answer core NATS requests on `subject` (request/reply)."""
        self._subs.append(await self.nc.subscribe(subject, queue=queue, cb=handler))

    async def retry_later(self, msg: Msg, *, max_deliveries: int) -> bool:
        """The one policy for a message whose handling failed (store or bus down, a bug):
        have JetStream deliver it again after 2, 4, 8... seconds (at most 30), until it has
        been delivered `max_deliveries` times.

        Returns False then, leaving the message alone: the caller gives up on it (dead-
        letters it, or records the failure and terminates it) with `gave_up(...)`.
        """
        delivered = msg.metadata.num_delivered
        if delivered >= max_deliveries:
            return False
        with contextlib.suppress(Exception):  # the connection may be gone: ack_wait covers it
            await msg.nak(delay=min(_MAX_REDELIVERY_DELAY, 2.0**delivered))
        return True

    async def dead_letter(self, msg: Msg, reason: str) -> None:
        """Keep an unusable message in the dead-letter stream with its reason, then ack it."""
        headers = {"Noetl-Reason": reason[:1000], "Noetl-Subject": msg.subject}
        try:
            await self.js.publish(f"noetl.dead.{msg.subject}", msg.data, headers=headers)
        finally:
            await msg.ack()
        log.warning("dead-lettered a message on %s: %s", msg.subject, reason)

    async def request(self, subject: str, data: bytes, timeout: float = 10.0) -> bytes:
        """A core NATS request; raises nats.errors.NoRespondersError when nobody serves it."""
        reply = await self.nc.request(subject, data, timeout=timeout)
        return bytes(reply.data)

    async def stop_consuming(self) -> None:
        """Stop receiving new messages (in-flight handlers finish on their own) and
        refreshing keepers.

        Returns within a few seconds at most, leaving no pull request of this process on
        the server to take a message nobody would handle: each puller's inbox is
        unsubscribed, and the server drops a waiting request whose reply subject has no
        subscriber (whatever it had already sent is handed back at once).
        """
        keeper, self._keeper = self._keeper, None
        if keeper is not None:
            await keeper.stop()
        pullers, self._pullers = self._pullers, []
        await asyncio.gather(*(puller.stop() for puller in pullers), return_exceptions=True)
        subs, self._subs = self._subs, []
        for sub in subs:
            with contextlib.suppress(
                nats.errors.ConnectionClosedError, nats.errors.BadSubscriptionError
            ):
                await sub.unsubscribe()

    async def close(self) -> None:
        """Flush and close the connection."""
        await self.stop_consuming()
        if not self.nc.is_closed:
            try:
                await self.nc.drain()
            except (TimeoutError, nats.errors.ConnectionClosedError):
                await self.nc.close()


async def _settled(declare: Callable[[], Awaitable[T]]) -> T:
    """`declare()`, tried again while JetStream answers what a later try does not.

    On a cluster, processes starting together race to create a durable consumer and the
    losers are refused (the next try binds to it); a busy or electing cluster times out or
    has no JetStream responder for a moment. A process starting then must not die of it.
    """
    for attempt in range(_SETUP_ATTEMPTS):
        try:
            return await declare()
        except BadRequestError as exc:
            if exc.err_code not in _CONSUMER_EXISTS or attempt == _SETUP_ATTEMPTS - 1:
                raise
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError, ServiceUnavailableError):
            if attempt == _SETUP_ATTEMPTS - 1:
                raise
            log.warning("JetStream is busy or electing a leader: trying again")
        await asyncio.sleep(0.25 * (attempt + 1))
    raise AssertionError("unreachable: the last attempt returns or raises")


def gave_up(max_deliveries: int, exc: BaseException) -> str:
    """Why a message was given up on after `retry_later` said so."""
    return f"gave up after {max_deliveries} deliveries: {type(exc).__name__}: {exc}"


def encode_json(value: Any) -> bytes:
    """JSON for notifications read by humans' tools."""
    return msgspec.json.encode(value)
