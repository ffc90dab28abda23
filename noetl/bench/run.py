"""Runs the chosen workloads in one environment and assembles the document."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from noetl.bench.chain import chain, history
from noetl.bench.env import bench_env
from noetl.bench.fanout import fanout, wide_loop
from noetl.bench.floors import floors
from noetl.bench.machine import machine
from noetl.bench.memory import idle
from noetl.bench.model import FULL, QUICK, Document, Floors, Workload
from noetl.bench.replay import replay_seconds
from noetl.bench.scaling import scaling
from noetl.bench.sink import sink
from noetl.bench.throughput import throughput
from noetl.config import Settings

Say = Callable[[str], None]


async def run_bench(
    settings: Settings, workloads: Sequence[Workload], *, quick: bool, say: Say
) -> Document:
    """Measure `workloads` (the floors too when the chain needs them) on the configured or
    embedded servers; `say` reports progress."""
    sizes = QUICK if quick else FULL
    async with bench_env(settings, say) as env:
        document = Document(machine=await machine(env), quick=quick)
        measured: Floors | None = None
        if {"floors", "chain"} & set(workloads):
            say("bench: floors")
            measured = document.floors = await floors(env, sizes.floor_samples)
        if "chain" in workloads:
            assert measured is not None
            say("bench: chain")
            document.chain = await chain(env, measured, sizes.chain_steps, sizes.chain_runs)
        if "fanout" in workloads:
            say("bench: fanout")
            document.fanout = await fanout(env, sizes.fanout_items)
        if "throughput" in workloads:
            say("bench: throughput")
            document.throughput = await throughput(env, sizes.throughput_executions)
        if "replay" in workloads:
            say("bench: replay")
            document.replay = await replay_seconds(env, sizes.replay_events)
        if "wide_loop" in workloads:
            say("bench: wide_loop")
            document.wide_loop = await wide_loop(env, sizes.wide_loop_items)
        if "sink" in workloads:
            say("bench: sink")
            document.sink = await sink(env, sizes.sink_rows)
        if "scaling" in workloads:  # adds and removes mesh processes: after the others
            say("bench: scaling")
            document.scaling = await scaling(env, sizes.scaling_executions)
        if "idle" in workloads:
            say("bench: idle")
            document.idle = await idle(sizes.idle_executions)
        if "history" in workloads:  # last: it empties the event table, then fills it
            say("bench: history")
            document.history = await history(
                env, sizes.history_events, sizes.chain_steps, sizes.history_runs, say
            )
        return document
