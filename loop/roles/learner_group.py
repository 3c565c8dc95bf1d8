"""The learner as a group of Ray actors (learner.ranks > 1): N ranks of one torch.distributed
process group (policies/distributed.py), placed by a placement group, behind the same
LearnerRole Protocol as the single learner actor.

Rank 0 picks the rendezvous address on its node and the driver hands it to the others; every
call goes to every rank (they train in lockstep) except export and state_bytes, which rank 0
alone answers (the ranks hold the same adapter and optimizer state). A rank that dies stops
the run with ActorLost naming it; --resume then starts a new group from the last checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from alignloop.loop.config import RunConfig
from alignloop.loop.roles.protocols import ActorLost, Exported, actor_error
from alignloop.loop.roles.ray_runtime import ACTOR_ENV, PLACEMENT_TIMEOUT_S
from alignloop.policies.adapter import AdapterPayload
from alignloop.policies.objectives.base import Example

# How often the driver asks rank 0 how far it is (for the progress bar).
PROGRESS_POLL_S = 0.5


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

    def allreduce_seconds(self) -> list[float]:
        """Each rank's seconds spent summing gradients so far."""
        self._joined()
        return self._all("allreduce_seconds", [h.allreduce_seconds.remote() for h in self.handles])

    def shutdown(self) -> None:
        for handle in self.handles:
            ray.kill(handle)
        remove_placement_group(self.placement_group)
