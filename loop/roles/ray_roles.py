"""The roles as Ray actors: Sampler, Judge and Learner classes made remote with the
resources the config asks for, behind the Protocols of loop/roles/protocols.py."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import ray
from ray.util.placement_group import remove_placement_group

from alignloop.loop.config import RunConfig
from alignloop.loop.roles.judges import JudgeWorker, JudgeWorkers, judge_name
from alignloop.loop.roles.learner_group import LearnerGroup
from alignloop.loop.roles.protocols import ActorLost, Exported
from alignloop.loop.roles.ray_runtime import (
    ACTOR_ENV,
    RayCalls,
    node_placement,
    sampler_placement,
    wait_for_placement,
)
from alignloop.loop.roles.samplers import SamplerReplicas
from alignloop.loop.roles.server_samplers import ServerSamplers, server_samplers
from alignloop.policies.adapter import AdapterPayload
from alignloop.policies.objectives.base import Example

# How often the driver asks the learner how far it is (for the progress bar).
PROGRESS_POLL_S = 0.5


class RayLearner:
    """The learner actor: one call per iteration, its progress polled (the actor answers
    `progress()` on a second thread while it trains); `export` leaves the adapter in the
    object store, where samplers fetch it without the bytes passing through the driver."""

    def __init__(self, handle):
        self.handle, self.calls = handle, RayCalls()

    def _get(self, method: str, ref):
        try:
            return self.calls.get(ref)
        except ActorLost as e:
            raise ActorLost(
                f"the learner actor died during {method}() ({e}); the run stopped there, with "
                "every finished step saved: run the same command with --resume to continue"
            ) from None

    def learn(
        self,
        examples: list[Example],
        iteration: int,
        version: int | None = None,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> dict[str, float]:
        ref = self.handle.learn.remote(examples, iteration, version)
        while on_progress and not ray.wait([ref], timeout=PROGRESS_POLL_S)[0]:
            on_progress(*self._get("learn", self.handle.progress.remote()))  # it died learning
        return self._get("learn", ref)

    def export(self) -> Exported:
        ref = self.handle.export.remote()
        return Exported(ref, self._get("export", ref))

    def state_bytes(self) -> bytes:
        return self._get("state_bytes", self.handle.state_bytes.remote())

    def restore(self, payload: AdapterPayload, state: bytes | None, version: int | None = None) -> None:
        self._get("restore", self.handle.restore.remote(payload, state, version))


class RayRoles:
    """The run's actors, created with the resources the config asks for."""

    def __init__(self, cfg: RunConfig):
        from alignloop.policies.learner import Learner
        from alignloop.policies.samplers import sampler_class

        self.cfg = cfg
        self.judge_pools: list[JudgeWorkers] = []  # the run's judges and any evaluation's own
        server = cfg.sampler.backend == "server"  # inference servers sample: no sampler actors
        sampler_cls: Any = None if server else ray.remote(sampler_class(cfg.sampler.backend))  # an actor class
        replicas = 0 if server else cfg.sampler.replicas
        placed = [sampler_placement(cfg.sampler, cfg.ray.placement_timeout_s) for _ in range(replicas)]
        self.placement_groups = [group for _, group in placed if group is not None]
        wait_for_placement(cfg)  # every other actor fits, or a message instead of waiting for good
        self.samplers: SamplerReplicas | ServerSamplers = SamplerReplicas(
            [sampler_cls.options(**options).remote(cfg.model, cfg.sampler) for options, _ in placed],
            RayCalls(),
            answer_timeout_s=cfg.ray.actor_restart_timeout_s,
        )
        if server:  # the probe's reference is the learner's, where it is idle when a version is published
            idle = cfg.learner.ranks == 1 and cfg.asynchronous.max_staleness == 0
            self.samplers = server_samplers(cfg, self._learner_logprobs if idle else None)
        self.judges = self.judges_for(cfg.judge)
        self.learner: RayLearner | LearnerGroup
        if cfg.learner.ranks > 1:
            self.learner = LearnerGroup(cfg)
            self.learner_handles = list(self.learner.handles)
            return
        # Two threads: one trains, the other answers progress() while it does.
        learner_cls = ray.remote(Learner).options(
            num_cpus=cfg.learner.num_cpus,
            num_gpus=cfg.learner.num_gpus,
            resources=cfg.learner.resources or None,
            runtime_env=ACTOR_ENV,
            max_concurrency=2,
        )
        self.learner = RayLearner(learner_cls.remote(cfg.model, cfg.learner, cfg.sampler.temperature, cfg.seed))
        self.learner_handles = [self.learner.handle]

    def _learner_logprobs(self, rows: list[Example]) -> list[list[float]]:
        return self.learner.calls.get(self.learner.handle.sequence_logprobs.remote(rows))

    def judges_for(self, judge_cfg) -> JudgeWorkers:
        """JudgeWorker actors for one judge config (the run's, or an evaluation's own)."""
        judging = self.cfg.judging
        judge_cls = ray.remote(JudgeWorker).options(
            num_cpus=judging.num_cpus,
            num_gpus=judging.num_gpus,
            max_restarts=1,
            resources=judging.resources or None,
            runtime_env=ACTOR_ENV,
        )
        pool = JudgeWorkers(
            [judge_cls.remote(judge_cfg) for _ in range(judging.actors)], judging.in_flight, judge_name(judge_cfg)
        )
        self.judge_pools.append(pool)
        return pool

    def describe(self) -> str:
        """What is starting and how long it usually takes (measured on a 2-core CPU)."""
        wait = {
            "hf": "about 5-20 s on a CPU",
            "vllm": "a vLLM engine: about 35 s on a CPU, longer for a large model on a GPU",
            "server": "the servers are up already: a few seconds",
        }
        ranks = self.cfg.learner.ranks
        return (
            f"{len(self.samplers.handles)} sampler(s) ({self.cfg.sampler.backend}), "
            f"{len(self.judges.handles)} judge actor(s) and the learner{f' ({ranks} ranks)' if ranks > 1 else ''}; "
            "loading the model takes "
            f"{wait[self.cfg.sampler.backend]}"
        )

    def handles(self) -> list:
        return [*self.samplers.handles, *(h for pool in self.judge_pools for h in pool.handles), *self.learner_handles]

    def wait_ready(self) -> None:
        """Block until every actor has been constructed (its model loaded); a constructor that
        raised surfaces here, before any step runs."""
        ray.get([h.__ray_ready__.remote() for h in self.handles()])

    def placement(self) -> dict:
        return node_placement(
            {"samplers": self.samplers.handles, "judges": self.judges.handles, "learner": self.learner_handles}
        )

    def shutdown(self) -> None:
        self.samplers.close()
        for handle in self.handles():
            ray.kill(handle)
        for group in self.placement_groups:
            remove_placement_group(group)
        if isinstance(self.learner, LearnerGroup):
            remove_placement_group(self.learner.placement_group)
