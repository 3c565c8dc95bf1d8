"""The Ray runtime: start a local instance or attach to a cluster, place actors, and resolve
their calls. The only module besides loop/roles/ray_roles.py that imports Ray."""

from __future__ import annotations

import os
from typing import Any

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from alignloop.loop import orphans
from alignloop.loop.config import BUILTIN_RESOURCES, ConfigError, RayConfig, RunConfig
from alignloop.loop.roles.protocols import ActorLost, actor_error

# How long the run waits for the cluster to hold its actors (a tensor-parallel sampler: its
# GPUs) before it gives up: the default of ray.placement_timeout_s.
PLACEMENT_TIMEOUT_S = 300
# After this long without the actors placed, a line says what the run is waiting for.
PLACEMENT_QUIET_S = 5

# Set on every actor; Ray merges an actor's env_vars into the job's (a submitted job's own
# variables stay). Secrets are never put here: judges read their key on the node they run on.
ACTOR_ENV = {"env_vars": {"TOKENIZERS_PARALLELISM": "false"}}


def start_ray(cfg: RayConfig) -> None:
    """Attach to `ray.address` or $RAY_ADDRESS; otherwise start a local instance that listens
    on 127.0.0.1 only and starts no dashboard unless asked."""
    if ray.is_initialized():
        return
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    if address:
        # No job-level runtime_env here: under `ray job submit` the job has its own (working
        # dir, env vars); what alignloop needs goes on its actors (ACTOR_ENV), which Ray merges
        # into the job's rather than replacing it.
        ray.init(address=address, log_to_driver=True)
        return
    local_only()
    left = orphans.reap()
    if left:
        print(f"removed {len(left)} Ray process(es) a killed run had left behind: {', '.join(left)}", flush=True)
    ray.init(
        num_cpus=cfg.num_cpus or os.cpu_count(),
        include_dashboard=cfg.dashboard,
        dashboard_host="127.0.0.1",
        log_to_driver=True,
        configure_logging=True,
        logging_level="WARNING",  # type: ignore[arg-type]  # ray takes a level name too; its hint says int
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


def is_builtin_resource(name: str) -> bool:
    return name in BUILTIN_RESOURCES or name.startswith("node:")


class PlacementTimeout(ConfigError):
    """The cluster did not hold the run's actors within ray.placement_timeout_s (exit 2)."""


def _needs(role) -> dict[str, float]:
    """What one actor of a sampler, judging or learner config holds while it lives."""
    wanted = {"CPU": role.num_cpus, "GPU": role.num_gpus, **role.resources}
    return {k: float(v) for k, v in wanted.items() if v}


def actor_bundles(cfg: RunConfig) -> list[tuple[str, dict[str, float]]]:
    """(role, resources) of every actor the run starts, but the tensor-parallel samplers (they
    wait for their own placement groups) and actors that ask for nothing (they fit anywhere);
    a round with an eval judge of its own starts a second pool of judge actors."""
    samplers = cfg.sampler.replicas if cfg.sampler.engine.tensor_parallel_size == 1 else 0
    if cfg.sampler.backend == "server":  # the servers run outside the cluster: no sampler actors
        samplers = 0
    judge_pools = 2 if cfg.round.eval is not None and cfg.round.eval.judge is not None else 1
    learners = getattr(cfg.learner, "ranks", 1)
    roles: list[tuple[str, Any]] = [("sampler", cfg.sampler)] * samplers
    roles += [("judge", cfg.judging)] * (cfg.judging.actors * judge_pools) + [("learner", cfg.learner)] * learners
    return [(name, _needs(role)) for name, role in roles if _needs(role)]


def wait_for_placement(cfg: RunConfig) -> None:
    """Reserve at once what every actor will hold, wait on Ray until the reservation is
    placed, then release it for the actors. An actor that fits nowhere would otherwise stay
    pending for good, and the run with it, without a word: this ends in a PlacementTimeout
    naming what was asked and what the cluster has, after ray.placement_timeout_s."""
    bundles = actor_bundles(cfg)
    if not bundles:
        return
    group = placement_group([b for _, b in bundles], strategy="PACK")  # PACK may still use several nodes
    timeout = cfg.ray.placement_timeout_s
    try:
        placed = _ready(group, min(PLACEMENT_QUIET_S, timeout))
        if not placed and timeout > PLACEMENT_QUIET_S:
            print(
                f"waiting up to {timeout:.0f} s (ray.placement_timeout_s) for the cluster to hold the actors: "
                f"{_asked(bundles)}",
                flush=True,
            )
            placed = _ready(group, timeout - PLACEMENT_QUIET_S)
    finally:
        remove_placement_group(group)
    if not placed:
        raise PlacementTimeout(
            f"the cluster cannot hold the run's actors (waited {timeout:.0f} s, ray.placement_timeout_s): "
            f"they ask for {_asked(bundles)}; {_cluster(bundles)}. Lower sampler.replicas, judging.actors or the "
            "actors' num_cpus / num_gpus / resources, add nodes that offer them, or raise ray.placement_timeout_s "
            "if nodes are still joining"
        )


def _ready(group, timeout: float) -> bool:
    try:
        ray.get(group.ready(), timeout=timeout)
        return True
    except ray.exceptions.GetTimeoutError:
        return False


def _fmt(resources: dict[str, float]) -> str:
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in sorted(resources.items())) + "}"


def _asked(bundles: list[tuple[str, dict[str, float]]]) -> str:
    """'2 sampler(s) {CPU: 1, node_a: 1}, 1 learner(s) {CPU: 1}; in all {CPU: 3, node_a: 2}'."""
    groups: dict[tuple[str, str], int] = {}
    total: dict[str, float] = {}
    for name, b in bundles:
        groups[(name, _fmt(b))] = groups.get((name, _fmt(b)), 0) + 1
        for k, v in b.items():
            total[k] = total.get(k, 0.0) + v
    each = ", ".join(f"{n} {name}(s) {spec}" for (name, spec), n in groups.items())
    return f"{each}; in all {_fmt(total)}"


def _cluster(bundles: list[tuple[str, dict[str, float]]]) -> str:
    """What the cluster has (of the resources asked for), and which actor fits on no node."""
    keys = {k for _, b in bundles for k in b}
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    has = {k: sum(n.get(k, 0.0) for n in nodes) for k in keys}
    text = f"the cluster has {_fmt(has)} on {len(nodes)} node(s)"
    homeless = next((f"{name} {_fmt(b)}" for name, b in bundles if not any(_fits(b, n) for n in nodes)), None)
    return f"{text}, and no node can hold one {homeless}" if homeless else text


def _fits(bundle: dict[str, float], node: dict[str, float]) -> bool:
    return all(node.get(k, 0.0) >= v for k, v in bundle.items())


def sampler_placement(sampler, timeout_s: float = PLACEMENT_TIMEOUT_S) -> tuple[dict, object | None]:
    """Actor options for one sampler replica, and the placement group made for it (or None).

    One engine on one device: plain actor resources. A tensor-parallel engine: a placement
    group of one bundle per GPU, packed on one node (the shards talk over NVLink/PCIe, not the
    network); the actor runs in bundle 0 without a GPU of its own, and vLLM's Ray executor,
    which finds the group through the actor (child tasks are captured), puts one GPU worker
    in each bundle."""
    tp = sampler.engine.tensor_parallel_size
    if tp == 1:
        return dict(
            num_cpus=sampler.num_cpus,
            num_gpus=sampler.num_gpus,
            max_restarts=1,
            resources=sampler.resources or None,
            runtime_env=ACTOR_ENV,
        ), None
    first = {"GPU": 1, **({"CPU": sampler.num_cpus} if sampler.num_cpus else {}), **sampler.resources}
    group = placement_group([first] + [{"GPU": 1}] * (tp - 1), strategy="STRICT_PACK")
    if not _ready(group, timeout_s):
        remove_placement_group(group)
        raise PlacementTimeout(
            f"no node has {tp} free GPUs for a tensor-parallel sampler engine (waited {timeout_s:.0f} s, "
            "ray.placement_timeout_s); lower sampler.replicas or sampler.vllm.tensor_parallel_size, or add GPU nodes"
        )
    strategy = PlacementGroupSchedulingStrategy(
        placement_group=group, placement_group_bundle_index=0, placement_group_capture_child_tasks=True
    )
    return dict(
        num_cpus=sampler.num_cpus, num_gpus=0, max_restarts=1, scheduling_strategy=strategy, runtime_env=ACTOR_ENV
    ), group


def node_placement(groups: dict[str, list]) -> dict:
    """The Ray node id each actor runs on, per group, asked of the actors themselves, and each
    node's custom resources, so a line says which node is which."""

    def node_of(handle):
        return handle.__ray_call__.remote(lambda actor: ray.get_runtime_context().get_node_id())

    refs = {group: [node_of(h) for h in handles] for group, handles in groups.items()}
    nodes = {n["NodeID"]: n for n in ray.nodes()}
    out: dict[str, Any] = {group: ray.get(r) for group, r in refs.items()}
    out["nodes"] = {
        nid: sorted(k for k in nodes[nid]["Resources"] if not is_builtin_resource(k))
        for nid in sorted({n for ids in out.values() for n in ids})
        if nid in nodes
    }
    return out


def lost(e: Exception) -> ActorLost:
    return ActorLost(actor_error(e), restarting=isinstance(e, ray.exceptions.ActorUnavailableError))


class RayCalls:
    """Resolves actor calls (object refs); a dead actor is an ActorLost."""

    def get(self, futures, timeout: float | None = None):
        try:
            return ray.get(futures, timeout=timeout)
        except ray.exceptions.RayActorError as e:
            raise lost(e) from None
        except ray.exceptions.GetTimeoutError:
            raise ActorLost(f"no answer within {timeout:.0f} s (its node may have left the cluster)") from None

    def each_settled(self, futures: dict):
        """(key, result) as each call finishes; the result is the exception for a call that
        raised (an ActorLost for one whose actor died), for the caller to retry or raise."""
        index = {ref: key for key, ref in futures.items()}
        pending = list(index)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            try:
                yield index[done[0]], ray.get(done[0])
            except ray.exceptions.RayActorError as e:
                yield index[done[0]], lost(e)
            except Exception as e:  # noqa: BLE001 - Ray's task error is also an instance of its cause
                yield index[done[0]], e
