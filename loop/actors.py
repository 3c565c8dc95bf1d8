"""Ray at the edges: the one module that turns Sampler, Judge and Learner into actors, places
them, and publishes adapters. The cycle talks to the handles this module returns.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections import deque
from typing import Callable, Sequence

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from loop.config import RayConfig, RunConfig
from records import Judgment, Prompt, Sample
from policies.adapter import AdapterMismatch, AdapterPayload


def start_ray(cfg: RayConfig) -> None:
    """Attach to `ray.address` or $RAY_ADDRESS; otherwise start a local instance that listens
    on 127.0.0.1 only and starts no dashboard unless asked."""
    if ray.is_initialized():
        return
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    env = {"env_vars": {"TOKENIZERS_PARALLELISM": "false"}}
    if address:
        ray.init(address=address, runtime_env=env, log_to_driver=True)
        return
    local_only()
    ray.init(
        num_cpus=cfg.num_cpus or os.cpu_count(),
        include_dashboard=cfg.dashboard,
        dashboard_host="127.0.0.1",
        runtime_env=env,
        log_to_driver=True,
        configure_logging=True,
        logging_level="WARNING",
    )


def local_only() -> None:
    """Make a local Ray instance advertise, and so bind, 127.0.0.1 instead of the machine's
    routable address. Ray has one switch for this, its single-machine mode (named for
    Windows/macOS); the environment variable reaches the raylet and workers, the constant
    the already imported driver."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False


class JudgeWorker:
    """Runs one judge backend. A call that raises becomes an error judgment for each sample
    of the chunk: counted, never a made-up reward."""

    def __init__(self, judge_cfg):
        from judges import build_judge

        # Not `self.judge`: that would hide the `judge` method on the instance.
        self.backend = build_judge(judge_cfg)
        self._taken: dict[str, float] = {}

    async def judge(self, prompts: Sequence[Prompt], samples: Sequence[Sample]) -> list[Judgment]:
        start = time.perf_counter()
        try:
            out = await self.backend.judge(prompts, samples)
            if len(out) != len(samples) or any(j.sample_id != s.id for j, s in zip(out, samples)):
                raise RuntimeError("the judge returned judgments that do not match the samples one to one")
            return out
        except Exception as e:  # noqa: BLE001 - any failure of a user's judge becomes a recorded error
            err = f"{type(e).__name__}: {e}"
            took = time.perf_counter() - start
            return [Judgment(sample_id=s.id, judge=self.backend.name, latency_s=took, error=err) for s in samples]

    def judge_sync(self, prompts, samples):
        return asyncio.run(self.judge(prompts, samples))

    async def take_usage(self) -> dict[str, float]:
        """The judge's counters (requests, tokens, cost...) since the last call: one
        iteration's worth when the cycle asks once per judge step. {} for judges that keep none."""
        usage = getattr(self.backend, "usage", None)
        if usage is None:
            return {}
        now = dict(usage())
        taken, self._taken = self._taken, now
        return {k: v - taken.get(k, 0) for k, v in now.items()}


async def judge_pool(handles: list, chunks: list[tuple], in_flight: int, judge_name: str,
                     on_done: Callable[[int], None] = lambda i: None) -> list[list[Judgment]]:
    """Judge every chunk on the JudgeWorker actors; results come back in chunk order.

    Back-pressure: each actor has at most `in_flight` chunks outstanding and takes the next
    one only when one returns, so a fast actor does more and nothing piles up inside a slow
    one. JudgeWorker turns every failure of its judge into error judgments, so a call that
    raises means the actor itself is broken (it died, or its judge could not be built): it
    gets no more chunks, and its chunk is tried once more on another actor. Chunks left when
    no actor is left become error judgments, counted and retried by --resume.
    `handles[k].judge.remote(...)` may return a Ray ObjectRef or any awaitable (tests)."""
    todo = deque(range(len(chunks)))
    results: list = [None] * len(chunks)
    live, requeued = set(range(len(handles))), set()
    last_error: list[str] = []

    async def slot(k: int) -> None:
        while todo and k in live:
            i = todo.popleft()
            try:
                results[i] = await handles[k].judge.remote(*chunks[i])
            except Exception as e:  # noqa: BLE001 - an actor failure is an error on its chunk
                live.discard(k)
                last_error[:] = [f"judge actor failed: {_actor_error(e)}"]
                if live and i not in requeued:
                    requeued.add(i)
                    todo.appendleft(i)
                    continue
                results[i] = _chunk_error(chunks[i], judge_name, last_error[0])
            on_done(i)

    while todo and live:  # another round if a chunk came back after the other slots finished
        await asyncio.gather(*(slot(k) for k in sorted(live) for _ in range(in_flight)))
    for i in todo:
        results[i] = _chunk_error(chunks[i], judge_name, last_error[0])
        on_done(i)
    return results


def _actor_error(e: Exception) -> str:
    """One line: Ray's headline and, after its traceback, the line that names the cause
    (e.g. "ConfigError: environment variable OPENAI_API_KEY is not set")."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in str(e).splitlines() if line.strip()]
    text = lines[0][:300] if lines else ""
    if len(lines) > 1:
        text += f" ... {lines[-1][:500]}"
    return f"{type(e).__name__}: {text}"


def _chunk_error(chunk: tuple, judge_name: str, error: str) -> list[Judgment]:
    return [Judgment(sample_id=s.id, judge=judge_name, error=error) for s in chunk[1]]


# How long a tensor-parallel sampler waits for its GPUs before the run gives up.
PLACEMENT_TIMEOUT_S = 300


class Actors:
    """Handles to every actor of a run, created with the resources the config asks for."""

    def __init__(self, cfg: RunConfig):
        from policies.learner import Learner
        from policies.samplers import sampler_class

        sampler_cls = ray.remote(sampler_class(cfg.sampler.backend))
        placed = [sampler_placement(cfg.sampler) for _ in range(cfg.sampler.replicas)]
        self.placement_groups = [group for _, group in placed if group is not None]
        self.samplers = [sampler_cls.options(**options).remote(cfg.model, cfg.sampler) for options, _ in placed]
        judge_cls = ray.remote(JudgeWorker).options(
            num_cpus=cfg.judging.num_cpus, num_gpus=cfg.judging.num_gpus, max_restarts=1
        )
        self.judges = [judge_cls.remote(cfg.judge) for _ in range(cfg.judging.actors)]
        learner_cls = ray.remote(Learner).options(num_cpus=cfg.learner.num_cpus, num_gpus=cfg.learner.num_gpus)
        self.learner = learner_cls.remote(cfg.model, cfg.learner, cfg.sampler.temperature, cfg.seed)
        self.publisher = ObjectStorePublisher(self.samplers)

    def shutdown(self) -> None:
        try:
            ray.get([s.close.remote() for s in self.samplers], timeout=60)
        except Exception:  # noqa: BLE001 - a dead sampler has nothing left to clean
            pass
        for handle in [*self.samplers, *self.judges, self.learner]:
            ray.kill(handle)
        for group in self.placement_groups:
            remove_placement_group(group)


def sampler_placement(sampler) -> tuple[dict, object | None]:
    """Actor options for one sampler replica, and the placement group made for it (or None).

    One engine on one device: plain actor resources. A tensor-parallel engine: a placement
    group of one bundle per GPU, packed on one node (the shards talk over NVLink/PCIe, not the
    network); the actor runs in bundle 0 without a GPU of its own, and vLLM's Ray executor,
    which finds the group through the actor (child tasks are captured), puts one GPU worker
    in each bundle."""
    tp = sampler.engine.tensor_parallel_size
    if tp == 1:
        return dict(num_cpus=sampler.num_cpus, num_gpus=sampler.num_gpus, max_restarts=1), None
    first = {"GPU": 1, **({"CPU": sampler.num_cpus} if sampler.num_cpus else {})}
    group = placement_group([first] + [{"GPU": 1}] * (tp - 1), strategy="STRICT_PACK")
    try:
        ray.get(group.ready(), timeout=PLACEMENT_TIMEOUT_S)
    except ray.exceptions.GetTimeoutError:
        remove_placement_group(group)
        raise RuntimeError(
            f"no node has {tp} free GPUs for a tensor-parallel sampler engine (waited {PLACEMENT_TIMEOUT_S}s); "
            "lower sampler.replicas or sampler.vllm.tensor_parallel_size, or add GPU nodes"
        ) from None
    strategy = PlacementGroupSchedulingStrategy(
        placement_group=group, placement_group_bundle_index=0, placement_group_capture_child_tasks=True
    )
    return dict(num_cpus=sampler.num_cpus, num_gpus=0, max_restarts=1, scheduling_strategy=strategy), group


def map_chunks(
    handles: list, method: str, chunks: list[tuple], on_done: Callable[[int], None] = lambda n: None
) -> list:
    """Call `method(*chunk)` for every chunk, round-robin over the actors; results come back
    in chunk order. `on_done(i)` fires as each chunk finishes (for progress)."""
    refs = [getattr(handles[i % len(handles)], method).remote(*chunk) for i, chunk in enumerate(chunks)]
    index = {ref: i for i, ref in enumerate(refs)}
    results: list = [None] * len(refs)
    pending = list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        i = index[done[0]]
        results[i] = ray.get(done[0])
        on_done(i)
    return results


class ObjectStorePublisher:
    """Learner -> samplers through the Ray object store: no shared filesystem, works across
    nodes. Every sampler must report back the version and checksum it now serves."""

    def __init__(self, samplers: list):
        self.samplers = samplers

    def publish(self, payload: AdapterPayload) -> None:
        ref = ray.put(payload)
        served = ray.get([s.load_adapter.remote(ref) for s in self.samplers])
        self._check(served, payload)

    def ensure(self, payload: AdapterPayload) -> None:
        """Before sampling: a sampler that serves anything else (a restarted actor serves
        nothing) gets the payload again; then all must match."""
        served = ray.get([s.serving.remote() for s in self.samplers])
        stale = [s for s, v in zip(self.samplers, served) if tuple(v) != (payload.version, payload.checksum)]
        if stale:
            ref = ray.put(payload)
            ray.get([s.load_adapter.remote(ref) for s in stale])
            served = ray.get([s.serving.remote() for s in self.samplers])
        self._check(served, payload)

    @staticmethod
    def _check(served, payload: AdapterPayload) -> None:
        for i, (version, checksum) in enumerate(served):
            if (version, checksum) != (payload.version, payload.checksum):
                raise AdapterMismatch(
                    f"sampler {i} serves adapter v{version} ({str(checksum)[:12]}), expected "
                    f"v{payload.version} ({payload.checksum[:12]}); refusing to sample from a stale adapter"
                )
