"""Drill: random SIGKILLs of random roles (catalog, coordinator, two runners, each its own
process), each killed role restarted at once, while a mix of playbooks runs."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from noetl.config import Settings
from tests.fault.drills import ROLES, Drill, Mix, drill_mesh, now, recovery_after, timed
from tests.fault.harness import assert_db_clean, kill_hard, start_mesh
from tests.support.http_api import HttpApi


async def sigkill_drill(
    settings: Settings, api: HttpApi, tmp_path: Path, shared: Path, kills: int
) -> Drill:
    log = tmp_path / "mesh.log"
    rng = random.Random(kills)
    drill = Drill(name=f"sigkill x{kills}")
    async with drill_mesh(settings, log) as (client, procs):
        mix = Mix(client, api, tmp_path, shared)
        with timed(drill):
            await mix.register()
            for _ in range(kills):
                await mix.wave()
                await asyncio.sleep(rng.uniform(0.5, 2.0))
                name = rng.choice(sorted(ROLES))
                killed_at = now()
                kill_hard(procs[name])
                procs[name] = start_mesh(settings, log, ROLES[name])
                drill.faults.append(name)
                if name == "coordinator":
                    drill.recoveries.append(await recovery_after(client, killed_at))
            await mix.assert_all_ended_as_expected()
            drill.executions = len(mix.expected)
            await assert_db_clean(client.store)
    return drill


async def test_sigkills_of_random_roles(
    settings: Settings, api: HttpApi, tmp_path: Path, shared_path: Path
) -> None:
    drill = await sigkill_drill(settings, api, tmp_path, shared_path, kills=6)
    assert len(drill.faults) == 6


@pytest.mark.fault_long
@pytest.mark.timeout(900)
async def test_twenty_sigkills_of_random_roles(
    settings: Settings, api: HttpApi, tmp_path: Path, shared_path: Path
) -> None:
    drill = await sigkill_drill(settings, api, tmp_path, shared_path, kills=20)
    assert len(drill.faults) == 20
