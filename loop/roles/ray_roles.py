"""The roles as Ray actors: Sampler, Judge and Learner classes made remote with the
resources the config asks for, behind the Protocols of loop/roles/protocols.py; with
learner.ranks > 1 the learner is a LearnerGroup of RankLearner actors (policies/distributed.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from alignloop.loop.config import RunConfig
from alignloop.loop.roles.judges import JudgeWorker, JudgeWorkers, judge_name
from alignloop.loop.roles.protocols import ActorLost, Exported, actor_error
from alignloop.loop.roles.ray_runtime import (
    ACTOR_ENV,
    PLACEMENT_TIMEOUT_S,
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

    def sequence_logprobs(self, rows: list[Example]) -> list[list[float]]:
        return self.calls.get(self.handle.sequence_logprobs.remote(rows))


# The learner as a group of ranks (learner.ranks > 1) ----------------------------------------
#
# N ranks of one torch.distributed process group, placed by a placement group, behind the same
# LearnerRole Protocol as the single learner actor. Rank 0 picks the rendezvous address on its
# node and the driver hands it to the others; every call goes to every rank (they train in
# lockstep) except export and state_bytes, which rank 0 alone answers (the ranks hold the same
# adapter and optimizer state; sharded, every rank takes part in gathering them). A rank that
# dies stops the run with ActorLost naming it; --resume then starts a new group from the last
# checkpoint.


def rank_bundle(learner) -> dict[str, float]:
    """What one rank reserves: the learner's CPUs, GPUs and custom resources (a bundle may not
    be empty, so a rank that asks for nothing still holds a sliver of a CPU)."""
    bundle = {"CPU": learner.num_cpus, "GPU": learner.num_gpus, **learner.resources}
    return {k: v for k, v in bundle.items() if v} or {"CPU": 0.01}


# pack: as few nodes as fit (the gradients cross no network when one node holds them all);
# spread: every rank on a node of its own (Ray's best-effort SPREAD may still pack them).
STRATEGIES = {"pack": "PACK", "spread": "STRICT_SPREAD"}


def place_ranks(learner):
    """A placement group of one bundle per rank, packed or spread as `learner.placement` says."""
    group = placement_group([rank_bundle(learner)] * learner.ranks, strategy=STRATEGIES[learner.placement])
    try:
        ray.get(group.ready(), timeout=PLACEMENT_TIMEOUT_S)
    except ray.exceptions.GetTimeoutError:
        remove_placement_group(group)
        raise RuntimeError(
            f"the cluster cannot place {learner.ranks} learner ranks of {rank_bundle(learner)} each "
            f"({learner.placement}{': one node per rank' if learner.placement == 'spread' else ''}; waited "
            f"{PLACEMENT_TIMEOUT_S}s): lower learner.ranks or what each reserves (learner.num_cpus / num_gpus / "
            "resources), or add nodes"
        ) from None
    return group


class LearnerGroup:
    """LearnerRole over `learner.ranks` RankLearner actors."""

    def __init__(self, cfg: RunConfig):
        from alignloop.policies.distributed import RankLearner

        n = cfg.learner.ranks
        # FSDP2-sharded ranks gather the adapter and the optimizer state together (a collective)
        self.sharded = cfg.learner.shard_base
        self.placement_group = place_ranks(cfg.learner)
        # Two threads per rank: one trains, the other answers progress() while it does.
        cls: Any = ray.remote(RankLearner)  # an actor class
        self.handles: list[Any] = [
            cls.options(
                num_cpus=cfg.learner.num_cpus,
                num_gpus=cfg.learner.num_gpus,
                resources=cfg.learner.resources or None,
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    placement_group=self.placement_group, placement_group_bundle_index=r
                ),
                runtime_env=ACTOR_ENV,
                max_concurrency=2,
            ).remote(cfg.model, cfg.learner, cfg.sampler.temperature, cfg.seed, rank=r, world=n)
            for r in range(n)
        ]
        host = self._get("start", self.handles[0].__ray_call__.remote(lambda _: ray.util.get_node_ip_address()), 0)
        address = self._get("start", self.handles[0].rendezvous.remote(host), 0)
        # Joining blocks each rank until all have joined; nothing else is sent to a rank before
        # its join finished (see _joined), so no call can run beside it on the second thread.
        self._joining: list | None = [h.join.remote(address) for h in self.handles]

    def _lost(self, method: str, rank: int, e: BaseException) -> ActorLost:
        return ActorLost(
            f"learner rank {rank} of {len(self.handles)} died during {method}() ({actor_error(e)}); the run "
            "stopped there, with every finished step saved: run the same command with --resume to continue"
        )

    def _get(self, method: str, ref, rank: int):
        try:
            return ray.get(ref)
        except ray.exceptions.RayActorError as e:
            raise self._lost(method, rank, e) from None

    def _all(self, method: str, refs: list) -> list:
        """Every rank's result. When one rank fails, the others stop too (their collectives
        find its connection closed); a rank that died is named, before any other's error."""
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            try:
                ray.get(done[0])
            except ray.exceptions.RayActorError as e:
                raise self._lost(method, refs.index(done[0]), e) from None
            except Exception:  # noqa: BLE001 - a rank's own error: first see whether a peer died
                self._raise_if_one_died(method)
                raise
        return ray.get(refs)

    def _raise_if_one_died(self, method: str) -> None:
        for rank, handle in enumerate(self.handles):
            self._get(method, handle.__ray_ready__.remote(), rank)

    def _joined(self) -> None:
        if self._joining is not None:
            self._all("start", self._joining)
            self._joining = None

    def learn(
        self,
        examples: list[Example],
        iteration: int,
        version: int | None = None,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> dict[str, float]:
        self._joined()
        refs = [h.learn.remote(examples, iteration, version) for h in self.handles]
        while on_progress and len(ray.wait(refs, num_returns=len(refs), timeout=PROGRESS_POLL_S)[0]) < len(refs):
            try:
                on_progress(*ray.get(self.handles[0].progress.remote()))
            except ray.exceptions.RayActorError:
                break  # rank 0 died: _all names it
        return self._all("learn", refs)[0]

    def _from_rank0(self, method: str) -> list:
        """Rank 0's call to `method`, or, sharded, every rank's (rank 0's first)."""
        self._joined()
        refs = [getattr(h, method).remote() for h in (self.handles if self.sharded else self.handles[:1])]
        self._all(method, refs)
        return refs

    def export(self) -> Exported:
        ref = self._from_rank0("export")[0]
        return Exported(ref, self._get("export", ref, 0))

    def state_bytes(self) -> bytes:
        return self._get("state_bytes", self._from_rank0("state_bytes")[0], 0)

    def restore(self, payload: AdapterPayload, state: bytes | None, version: int | None = None) -> None:
        self._joined()
        self._all("restore", [h.restore.remote(payload, state, version) for h in self.handles])

    def sequence_logprobs(self, rows: list[Example]) -> list[list[float]]:
        """Rank 0's log-probs of the rows (sharded, every rank runs the forwards with it)."""
        self._joined()
        handles = self.handles if self.sharded else self.handles[:1]
        return self._all("sequence_logprobs", [h.sequence_logprobs.remote(rows) for h in handles])[0]

    def allreduce_seconds(self) -> list[float]:
        """Each rank's seconds spent summing gradients so far."""
        self._joined()
        return self._all("allreduce_seconds", [h.allreduce_seconds.remote() for h in self.handles])

    def shutdown(self) -> None:
        for handle in self.handles:
            ray.kill(handle)
        remove_placement_group(self.placement_group)


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
        return self.learner.sequence_logprobs(rows)

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
