"""The bench document (`bench --json`): its keys are a contract, kept from run to run so
that figures can be compared with `tests/bench/baseline.json` and across versions."""

from __future__ import annotations

from typing import Final, Literal

import msgspec

Workload = Literal[
    "floors",
    "chain",
    "fanout",
    "throughput",
    "replay",
    "history",
    "wide_loop",
    "sink",
    "scaling",
    "idle",
]

# What `bench` runs when no `--workload` is named (the contract's figures).
DEFAULT_WORKLOADS: Final[tuple[Workload, ...]] = (
    "floors",
    "chain",
    "fanout",
    "throughput",
    "replay",
    "history",
)
# Run only when named: the further targets, the sink's rows/second, the
# throughput as mesh processes are added, and an idle cached execution's memory.
EXTRA_WORKLOADS: Final[tuple[Workload, ...]] = ("wide_loop", "sink", "scaling", "idle")
ALL_WORKLOADS: Final[tuple[Workload, ...]] = DEFAULT_WORKLOADS + EXTRA_WORKLOADS


class Sizes(msgspec.Struct, frozen=True, kw_only=True):
    """How much work each workload does (`--quick` shrinks them all)."""

    floor_samples: int = 2000
    chain_steps: int = 20
    chain_runs: int = 5
    fanout_items: int = 1000
    throughput_executions: int = 500
    replay_events: int = 100_000
    history_events: int = 10_000_000
    history_runs: int = 5
    wide_loop_items: int = 10_000
    sink_rows: int = 100_000
    scaling_executions: int = 150
    idle_executions: int = 2_000


FULL: Final = Sizes()
QUICK: Final = Sizes(
    floor_samples=200,
    chain_runs=2,
    fanout_items=100,
    throughput_executions=50,
    replay_events=5_000,
    history_events=100_000,
    history_runs=1,
    wide_loop_items=1_000,
    sink_rows=5_000,
    scaling_executions=20,
    idle_executions=200,
)


class Floors(msgspec.Struct, kw_only=True):
    """Medians of one durable PostgreSQL commit and one acknowledged JetStream publish."""

    pg_commit_ms: float
    js_publish_ack_ms: float

    @property
    def sum_ms(self) -> float:
        """F: the floor of one durable step hop."""
        return self.pg_commit_ms + self.js_publish_ack_ms


class Spread(msgspec.Struct, kw_only=True):
    """Median, lowest and highest of a few runs."""

    p50: float
    min: float
    max: float


class Chain(msgspec.Struct, kw_only=True):
    """Cost of one step of a sequential chain of trivial python steps."""

    per_step_ms: Spread
    per_step_over_floor: float


class Fanout(msgspec.Struct, kw_only=True):
    """An async loop of `items` trivial python items, then a step summing them."""

    wall_s: float
    items: int


class Throughput(msgspec.Struct, kw_only=True):
    """`executions` 3-step executions started at once through `noetl.start`."""

    executions_per_s: float
    steps_per_s: float
    executions: int


class Replay(msgspec.Struct, kw_only=True):
    """Loading and folding one execution's `events` decision events."""

    seconds: float
    events: int


class History(msgspec.Struct, kw_only=True):
    """Per-step cost of the chain with `events` rows already stored, over an empty table."""

    ratio: float
    empty_per_step_ms: float
    full_per_step_ms: float
    events: int


class WideLoop(msgspec.Struct, kw_only=True):
    """A wide async loop and the coordinator process's memory while it runs."""

    wall_s: float
    items: int
    rss_growth_mib: float


class Sink(msgspec.Struct, kw_only=True):
    """The postgres sink's rows/second next to a plain asyncpg COPY of ready tuples."""

    rows: int
    copy_rows_per_s: float
    insert_rows_per_s: float
    upsert_update_rows_per_s: float
    upsert_new_rows_per_s: float


class Scaling(msgspec.Struct, kw_only=True):
    """`executions` concurrent executions of `steps` steps per point; executions/second by
    point, `coordinators_C_runners_R`: C coordinator hosts and R runner processes."""

    executions: int
    steps: int
    executions_per_s: dict[str, float]


class Idle(msgspec.Struct, kw_only=True):
    """Python memory a coordinator holds per idle cached execution (tracemalloc)."""

    kib_per_execution: float
    executions: int


class Machine(msgspec.Struct, kw_only=True):
    """Where the figures were measured."""

    cores: int
    python: str
    nats: str
    postgres: str
    load_avg: float  # 1-minute load average when the bench started


class Document(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One bench run: the figures of the workloads that ran, and the machine."""

    machine: Machine
    quick: bool
    floors: Floors | None = None
    chain: Chain | None = None
    fanout: Fanout | None = None
    throughput: Throughput | None = None
    replay: Replay | None = None
    history: History | None = None
    wide_loop: WideLoop | None = None
    sink: Sink | None = None
    scaling: Scaling | None = None
    idle: Idle | None = None
