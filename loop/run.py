"""Start-up in one place: check the run directory, the data and the environment before
anything is written, lock the directory, start the roles, and hand them to a schedule."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from alignloop.loop.config import RunConfig
from alignloop.loop.data import load_data
from alignloop.loop.lock import DirLock
from alignloop.loop.preflight import attached, convert_embedded_once, preflight_run
from alignloop.loop.progress import placement_line
from alignloop.loop.roles.protocols import Exported
from alignloop.loop.schedules import schedule_for
from alignloop.loop.steps import Steps
from alignloop.loop.store import RunStore, check_run_dir, prepare_run_dir
from alignloop.loop.tracking import Tracking
from alignloop.records import Prompt


def run(cfg: RunConfig, resume: bool = False, overwrite: bool = False) -> list[dict]:
    """A whole run; its metrics, one row per iteration. A config, data or model problem is
    found before anything is written."""
    store = check_run_dir(cfg, resume, overwrite)
    state = None if overwrite else store.load_state()
    if state and state.next_step()[0] > cfg.iterations:
        print(f"{store.root}: all {cfg.iterations} iterations are done (raise `iterations` to continue)")
        return store.read_metrics()
    prompts = load_data(cfg.data)
    preflight_run(cfg, prompts)  # the run against the model too: before Ray, before anything is written
    with DirLock(cfg.resolved_run_dir, "run directory"):
        store = prepare_run_dir(cfg, resume, overwrite)  # checked again: now no one else writes
        with started(cfg, store, prompts) as steps:
            iterate(steps, steps.restore())
    return store.read_metrics()


def iterate(steps: Steps, adapter: Exported) -> Exported:
    """The run's iterations from where it stands (after steps.restore(), whose adapter the
    samplers serve) to the last; returns the adapter they serve at the end."""
    if steps.tracking:
        steps.tracking.catch_up()
    steps.clock = time.perf_counter()
    return schedule_for(steps.cfg)(steps, adapter)


@contextmanager
def started(cfg: RunConfig, store: RunStore, prompts: list[Prompt], tracking_base: int = 0) -> Iterator[Steps]:
    """The run's roles and tracking, started, placed and logged; stopped on exit."""
    with started_roles(cfg) as roles:
        tracking = Tracking(cfg, store, base=tracking_base)
        try:
            store.log_placement(roles.placement())
            yield Steps(cfg, store, roles, prompts, tracking)
        finally:
            tracking.close()


@contextmanager
def started_roles(cfg: RunConfig):
    """Ray (local or attached) and the run's actors, shut down on exit."""
    from alignloop.loop.roles.ray_roles import RayRoles
    from alignloop.loop.roles.ray_runtime import start_ray

    if not attached(cfg):
        convert_embedded_once(cfg.model.path)
    start = time.perf_counter()
    start_ray(cfg.ray)
    roles = RayRoles(cfg)
    try:
        print(f"starting Ray and {roles.describe()}", flush=True)
        roles.wait_ready()
        print(f"actors ready in {time.perf_counter() - start:.0f} s", flush=True)
        if attached(cfg):
            print(placement_line(roles.placement()), flush=True)
        yield roles
    finally:
        roles.shutdown()
