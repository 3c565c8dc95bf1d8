"""The roles as plain in-process objects: a run, a round or a script without Ray (one
process, the same pools over handles that run each call at once)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import torch

from alignloop.loop.config import RunConfig
from alignloop.loop.roles.judges import JudgeWorker, JudgeWorkers, judge_name
from alignloop.loop.roles.protocols import Exported
from alignloop.loop.roles.samplers import SamplerReplicas
from alignloop.loop.roles.server_samplers import ServerSamplers, server_samplers
from alignloop.policies.adapter import AdapterPayload
from alignloop.policies.objectives.base import Example


class Done:
    """A LocalHandle call's outcome, standing in for an object ref: its value, or the
    exception it raised (re-raised where the result is asked for, as Ray does)."""

    def __init__(self, value=None, error: BaseException | None = None):
        self.value, self.error = value, error

    def result(self):
        if self.error is not None:
            raise self.error
        return self.value


class LocalCalls:
    def get(self, futures, timeout: float | None = None):
        return [f.result() for f in futures] if isinstance(futures, list) else futures.result()

    def each_settled(self, futures: dict):
        for key, f in futures.items():
            yield key, f.error if f.error is not None else f.value


class LocalHandle:
    """An in-process object behind Ray's handle API: `h.method.remote(*args)` runs the call at
    once; a coroutine method returns its coroutine (awaited by the judge pool, like a ref).

    The objects share one process, and sampling ahead calls them from two threads: their
    calls take turns, each with the object's own torch RNG stream, as in an actor process of
    its own, so a sampler's draw never depends on what the learner did meanwhile."""

    _turn = threading.Lock()

    def __init__(self, obj):
        self.obj, self.rng = obj, torch.get_rng_state()

    def __getattr__(self, name: str):
        fn = getattr(self.obj, name)

        def remote(*args):
            args = [a.result() if isinstance(a, Done) else a for a in args]
            if asyncio.iscoroutinefunction(fn):
                return fn(*args)
            with self._turn:
                shared = torch.get_rng_state()
                torch.set_rng_state(self.rng)
                try:
                    return Done(fn(*args))
                except Exception as e:  # noqa: BLE001 - delivered where the result is asked for
                    return Done(error=e)
                finally:
                    self.rng = torch.get_rng_state()
                    torch.set_rng_state(shared)

        return SimpleNamespace(remote=remote)


class LocalLearner:
    """The learner in this process; its progress is reported when the iteration ends."""

    def __init__(self, learner):
        self.handle = LocalHandle(learner)

    def learn(
        self,
        examples: list[Example],
        iteration: int,
        version: int | None = None,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> dict[str, float]:
        metrics = self.handle.learn.remote(examples, iteration, version).result()
        if on_progress:
            on_progress(*self.handle.progress.remote().result())
        return metrics

    def export(self) -> Exported:
        done = self.handle.export.remote()
        return Exported(done, done.result())

    def state_bytes(self) -> bytes:
        return self.handle.state_bytes.remote().result()

    def restore(self, payload: AdapterPayload, state: bytes | None, version: int | None = None) -> None:
        self.handle.restore.remote(payload, state, version).result()


class LocalRoles:
    """Every role as an in-process object: phases one after another in one process."""

    def __init__(self, cfg: RunConfig):
        from alignloop.policies.learner import Learner
        from alignloop.policies.samplers import sampler_class

        if cfg.learner.ranks > 1:  # one process holds one rank; training one instead would ignore the setting
            raise ValueError(
                f"learner.ranks is {cfg.learner.ranks}, but the in-process roles hold one learner: run with Ray "
                "(alignloop run), or set learner.ranks: 1"
            )
        self.cfg = cfg
        server = cfg.sampler.backend == "server"  # inference servers sample: no sampler objects here
        cls: Any = None if server else sampler_class(cfg.sampler.backend)
        self.samplers: SamplerReplicas | ServerSamplers = SamplerReplicas(
            [LocalHandle(cls(cfg.model, cfg.sampler)) for _ in range(0 if server else cfg.sampler.replicas)],
            LocalCalls(),
        )
        self.judges = self.judges_for(cfg.judge)
        self.learner = LocalLearner(Learner(cfg.model, cfg.learner, cfg.sampler.temperature, cfg.seed))
        if server:  # the probe's reference: the learner, idle when a version is published
            idle = cfg.asynchronous.max_staleness == 0
            self.samplers = server_samplers(cfg, self._learner_logprobs if idle else None)

    def _learner_logprobs(self, rows: list) -> list[list[float]]:
        return self.learner.handle.sequence_logprobs.remote(rows).result()

    def judges_for(self, judge_cfg) -> JudgeWorkers:
        return JudgeWorkers(
            [LocalHandle(JudgeWorker(judge_cfg)) for _ in range(self.cfg.judging.actors)],
            self.cfg.judging.in_flight,
            judge_name(judge_cfg),
        )

    def placement(self) -> dict:
        return {}  # one process: nothing to place

    def shutdown(self) -> None:
        self.samplers.close()
