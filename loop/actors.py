"""Ray at the edges: the one module that turns Sampler, Judge and Learner into actors, places
them, and publishes adapters. The cycle talks to the handles this module returns.
"""

from __future__ import annotations

import asyncio
import os
import re
import threading
import time
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Callable, Sequence

import ray
import torch
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from alignloop.loop import orphans
from alignloop.loop.config import BUILTIN_RESOURCES, RayConfig, RunConfig
from alignloop.records import Judgment, Prompt, Sample
from alignloop.policies.adapter import AdapterMismatch, AdapterPayload


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
        logging_level="WARNING",
    )


# Set on every actor; Ray merges an actor's env_vars into the job's (a submitted job's own
# variables stay). Secrets are never put here: judges read their key on the node they run on.
ACTOR_ENV = {"env_vars": {"TOKENIZERS_PARALLELISM": "false"}}


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
        from alignloop.judges import build_judge

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


async def judge_queue(handles: list, queue: asyncio.Queue, total: int, in_flight: int, judge_name: str,
                      on_done: Callable[[int], None] = lambda i: None) -> list[list[Judgment]]:
    """Judge `total` chunks that arrive on `queue` as (index, chunk), possibly while a producer
    is still making them (streaming); results come back in index order.

    Back-pressure: each actor has at most `in_flight` chunks outstanding and takes the next
    one only when one returns, so a fast actor does more and nothing piles up inside a slow
    one. JudgeWorker turns every failure of its judge into error judgments, so a call that
    raises means the actor itself is broken (it died, or its judge could not be built): it
    gets no more chunks, and its chunk is tried once more on another actor. Chunks left when
    no actor is left become error judgments, counted and retried by --resume.
    `handles[k].judge.remote(...)` may return a Ray ObjectRef or any awaitable (tests)."""
    results: dict[int, list[Judgment]] = {}
    live, requeued = set(range(len(handles))), set()
    last_error: list[str] = []
    slots = len(handles) * in_flight

    def finish(i: int, part: list[Judgment]) -> None:
        results[i] = part
        on_done(i)
        if len(results) == total:
            for _ in range(slots):  # wake the slots still waiting for work: there is none
                queue.put_nowait(None)

    async def slot(k: int) -> None:
        while k in live:
            item = await queue.get()
            if item is None:
                return
            if k not in live:  # its actor died while this slot waited: the chunk goes back
                queue.put_nowait(item)
                return
            i, chunk = item
            try:
                part = await handles[k].judge.remote(*chunk)
            except Exception as e:  # noqa: BLE001 - an actor failure is an error on its chunk
                live.discard(k)
                last_error[:] = [f"judge actor failed: {_actor_error(e)}"]
                if live and i not in requeued:
                    requeued.add(i)
                    queue.put_nowait(item)
                else:
                    finish(i, _chunk_error(chunk, judge_name, last_error[0]))
                return
            finish(i, part)

    if total:
        await asyncio.gather(*(slot(k) for k in range(len(handles)) for _ in range(in_flight)))
    while len(results) < total:  # no actor is left: what remains (or is yet to come) is an error
        item = await queue.get()
        if item is not None:
            finish(item[0], _chunk_error(item[1], judge_name, last_error[0]))
    return [results[i] for i in range(total)]


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
# How long a restarting sampler (its constructor loads the model again) may take to answer.
RESTART_TIMEOUT_S = 300


class Actors:
    """The run's actors, created with the resources the config asks for, behind the facades
    the cycle uses (`samplers`, `judges`, `learner`)."""

    def __init__(self, cfg: RunConfig):
        from alignloop.policies.learner import Learner
        from alignloop.policies.samplers import sampler_class

        self.cfg, self.extra_judges = cfg, []
        sampler_cls = ray.remote(sampler_class(cfg.sampler.backend))
        placed = [sampler_placement(cfg.sampler) for _ in range(cfg.sampler.replicas)]
        self.placement_groups = [group for _, group in placed if group is not None]
        self.samplers = SamplerPool([sampler_cls.options(**options).remote(cfg.model, cfg.sampler) for options, _ in placed],
                                    answer_timeout_s=cfg.ray.actor_restart_timeout_s)
        self.judges = start_judges(cfg.judge, cfg.judging)
        learner_cls = ray.remote(Learner).options(num_cpus=cfg.learner.num_cpus, num_gpus=cfg.learner.num_gpus,
                                                  resources=cfg.learner.resources or None, runtime_env=ACTOR_ENV)
        self.learner = LearnerHandle(learner_cls.remote(cfg.model, cfg.learner, cfg.sampler.temperature, cfg.seed))

    def describe(self) -> str:
        """What is starting and how long it usually takes (measured on a 2-core CPU)."""
        wait = {"hf": "about 5-20 s on a CPU", "vllm": "a vLLM engine: about 35 s on a CPU, longer for a large model on a GPU"}
        return (f"{len(self.samplers.handles)} sampler(s) ({self.cfg.sampler.backend}), "
                f"{len(self.judges.handles)} judge actor(s) and the learner; loading the model takes "
                f"{wait[self.cfg.sampler.backend]}")

    def wait_ready(self) -> None:
        """Block until every actor has been constructed (its model loaded); a constructor that
        raised surfaces here, before any step runs."""
        ray.get([h.__ray_ready__.remote() for h in [*self.samplers.handles, *self.judges.handles, self.learner.handle]])

    def placement(self) -> dict:
        """The Ray node id each actor runs on, per group, asked of the actors themselves."""
        def node_of(handle):
            return handle.__ray_call__.remote(lambda actor: ray.get_runtime_context().get_node_id())

        groups = {"samplers": self.samplers.handles, "judges": self.judges.handles, "learner": [self.learner.handle]}
        refs = {group: [node_of(h) for h in handles] for group, handles in groups.items()}
        nodes = {n["NodeID"]: n for n in ray.nodes()}
        out = {group: ray.get(r) for group, r in refs.items()}
        # each node's custom resources, so a line says which node is which
        out["nodes"] = {nid: sorted(k for k in nodes[nid]["Resources"] if not is_builtin_resource(k))
                        for nid in sorted({n for ids in out.values() for n in ids}) if nid in nodes}
        return out

    def add_judges(self, judge_cfg) -> "JudgePool":
        """Judge actors of another judge config (an eval's own), shut down with the rest."""
        pool = start_judges(judge_cfg, self.cfg.judging)
        self.extra_judges.append(pool)
        return pool

    def shutdown(self) -> None:
        self.samplers.close()
        extra = [h for pool in self.extra_judges for h in pool.handles]
        for handle in [*self.samplers.handles, *self.judges.handles, *extra, self.learner.handle]:
            ray.kill(handle)
        for group in self.placement_groups:
            remove_placement_group(group)


def is_builtin_resource(name: str) -> bool:
    return name in BUILTIN_RESOURCES or name.startswith("node:")


class LocalActors:
    """The same facades over plain in-process objects: the cycle, a round or a script runs
    without Ray (one process, phases one after another)."""

    def __init__(self, cfg: RunConfig):
        from alignloop.policies.learner import Learner
        from alignloop.policies.samplers import sampler_class

        calls = LocalCalls()
        cls = sampler_class(cfg.sampler.backend)
        self.samplers = SamplerPool([LocalHandle(cls(cfg.model, cfg.sampler)) for _ in range(cfg.sampler.replicas)], calls)
        self.judges = JudgePool([LocalHandle(JudgeWorker(cfg.judge)) for _ in range(cfg.judging.actors)],
                                cfg.judging.in_flight, judge_name(cfg.judge))
        self.learner = LearnerHandle(LocalHandle(Learner(cfg.model, cfg.learner, cfg.sampler.temperature, cfg.seed)), calls)

    def placement(self) -> dict:
        return {}  # one process: nothing to place

    def shutdown(self) -> None:
        self.samplers.close()


def start_judges(judge_cfg, judging) -> "JudgePool":
    """JudgeWorker actors for one judge config (the run's, or an evaluation's own)."""
    judge_cls = ray.remote(JudgeWorker).options(num_cpus=judging.num_cpus, num_gpus=judging.num_gpus, max_restarts=1,
                                                resources=judging.resources or None, runtime_env=ACTOR_ENV)
    return JudgePool([judge_cls.remote(judge_cfg) for _ in range(judging.actors)], judging.in_flight, judge_name(judge_cfg))


def judge_name(judge_cfg) -> str:
    return getattr(judge_cfg, "name", None) or judge_cfg.type


def sampler_placement(sampler) -> tuple[dict, object | None]:
    """Actor options for one sampler replica, and the placement group made for it (or None).

    One engine on one device: plain actor resources. A tensor-parallel engine: a placement
    group of one bundle per GPU, packed on one node (the shards talk over NVLink/PCIe, not the
    network); the actor runs in bundle 0 without a GPU of its own, and vLLM's Ray executor,
    which finds the group through the actor (child tasks are captured), puts one GPU worker
    in each bundle."""
    tp = sampler.engine.tensor_parallel_size
    if tp == 1:
        return dict(num_cpus=sampler.num_cpus, num_gpus=sampler.num_gpus, max_restarts=1,
                    resources=sampler.resources or None, runtime_env=ACTOR_ENV), None
    first = {"GPU": 1, **({"CPU": sampler.num_cpus} if sampler.num_cpus else {}), **sampler.resources}
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
    return dict(num_cpus=sampler.num_cpus, num_gpus=0, max_restarts=1, scheduling_strategy=strategy,
                runtime_env=ACTOR_ENV), group


# ---------------------------------------------------------------------------------------------
# Facades: what the cycle calls. Each wraps handles whose `.method.remote(*args)` return a
# future (a Ray ObjectRef, or a finished LocalHandle call), resolved through `Calls`.
# ---------------------------------------------------------------------------------------------


class ActorLost(RuntimeError):
    """An actor died (killed, out of memory, its node gone) and the run cannot go on without
    it; everything finished is saved, and --resume continues. `restarting`: Ray is bringing
    the actor back (it may answer again shortly)."""

    def __init__(self, message: str, restarting: bool = False):
        super().__init__(message)
        self.restarting = restarting


def _lost(e: Exception) -> ActorLost:
    return ActorLost(_actor_error(e), restarting=isinstance(e, ray.exceptions.ActorUnavailableError))


class RayCalls:
    def get(self, futures, timeout: float | None = None):
        try:
            return ray.get(futures, timeout=timeout)
        except ray.exceptions.RayActorError as e:
            raise _lost(e) from None
        except ray.exceptions.GetTimeoutError:
            raise ActorLost(f"no answer within {timeout:.0f} s (its node may have left the cluster)") from None

    def each_settled(self, futures: dict):
        """(key, result), or (key, ActorLost) for a call whose actor died, as each finishes."""
        index = {ref: key for key, ref in futures.items()}
        pending = list(index)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            try:
                yield index[done[0]], ray.get(done[0])
            except ray.exceptions.RayActorError as e:
                yield index[done[0]], _lost(e)


class Done:
    """A LocalHandle call's result, standing in for an ObjectRef (it also passes as an
    argument to another local call, as a ref does to an actor)."""

    def __init__(self, value):
        self.value = value


class LocalCalls:
    def get(self, futures, timeout: float | None = None):
        return [f.value for f in futures] if isinstance(futures, list) else futures.value

    def each_settled(self, futures: dict):
        for key, f in futures.items():
            yield key, f.value


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
            args = [a.value if isinstance(a, Done) else a for a in args]
            if asyncio.iscoroutinefunction(fn):
                return fn(*args)
            with self._turn:
                shared = torch.get_rng_state()
                torch.set_rng_state(self.rng)
                try:
                    return Done(fn(*args))
                finally:
                    self.rng = torch.get_rng_state()
                    torch.set_rng_state(shared)

        return SimpleNamespace(remote=remote)


Calls = RayCalls | LocalCalls


@dataclass(frozen=True)
class Exported:
    """A published adapter: `ref` is what travels to the samplers (the learner's own object,
    so the bytes never pass back through the driver), `payload` the driver's copy to save."""

    ref: Any
    payload: AdapterPayload


class SamplerPool:
    """The sampler replicas: chunks round-robin, adapters verified on every replica."""

    def __init__(self, handles: list, calls: Calls | None = None, answer_timeout_s: float | None = None):
        """`answer_timeout_s`: how long a control call (load an adapter, say what it serves)
        may wait; a sampler that Ray is restarting where no node can take it never answers."""
        self.handles, self.calls, self.timeout = handles, calls or RayCalls(), answer_timeout_s
        self.adapter: Exported | None = None  # what every replica must serve (set by publish/ensure)
        self.live = list(range(len(handles)))

    def _control(self, futures):
        try:
            return self.calls.get(futures, timeout=self.timeout)
        except ActorLost as e:
            raise ActorLost(f"a sampler actor died or stopped answering ({e}); every finished step is saved: "
                            "run the same command with --resume (on a cluster, once its nodes are back, or "
                            "with sampler.resources that the remaining nodes offer)", e.restarting) from None

    def generate(self, chunks: list[tuple], on_done: Callable[[int, list[Sample]], None] = lambda i, part: None
                 ) -> list[list[Sample]]:
        """`generate(*chunk)` for every chunk; results in chunk order, `on_done(i, samples)` as each finishes.

        A replica that dies mid-chunk is restarted by Ray (max_restarts): it gets the current
        adapter again (version and checksum verified) and its chunk is sampled again, on it or,
        if it is gone for good, on another replica. Chunks are seeded by their own content, so
        the retried chunk gives the same samples. A chunk is retried once."""
        results: list = [None] * len(chunks)
        todo = {i: self.live[i % len(self.live)] for i in range(len(chunks))}
        retried: set[int] = set()
        while todo:
            futures = {i: self.handles[k].generate.remote(*chunks[i]) for i, k in todo.items()}
            replica, todo = dict(todo), {}
            for i, result in self.calls.each_settled(futures):
                if not isinstance(result, ActorLost):
                    results[i] = result
                    on_done(i, result)
                    continue
                if i in retried:
                    raise ActorLost(f"sampler {replica[i]} died twice on the same chunk ({result}); run the same "
                                    "command with --resume to continue") from None
                retried.add(i)
                todo[i] = self.recover(replica[i], result)
        return results

    def recover(self, k: int, error: ActorLost) -> int:
        """The replica to retry a chunk of dead replica k on: k itself once Ray has restarted
        it and it serves the current adapter again, else another live one."""
        if self.adapter is None:
            raise ActorLost(f"sampler {k} died ({error}) before any adapter was published to it")
        deadline = time.monotonic() + (self.timeout or RESTART_TIMEOUT_S)
        while k in self.live:
            try:
                self._check([tuple(self.calls.get(self.handles[k].load_adapter.remote(self.adapter.ref),
                                                  timeout=self.timeout))], self.adapter.payload)
                print(f"sampler {k} died ({error}); restarted, serving adapter v{self.adapter.payload.version} "
                      "again, retrying its chunk", flush=True)
                return k
            except ActorLost as e:
                if not e.restarting or time.monotonic() > deadline:
                    self.live.remove(k)  # out of restarts (or never back): the others take its share
                else:
                    time.sleep(0.5)  # Ray is restarting it; calls fail fast until it is back
        if not self.live:
            raise ActorLost(f"every sampler actor has died (last: {error}); run the same command with --resume "
                            "to continue")
        print(f"sampler {k} is gone ({error}); its chunk goes to sampler {self.live[0]}", flush=True)
        return self.live[0]

    def serving(self) -> list[tuple]:
        return [tuple(v) for v in self._control([s.serving.remote() for s in self.live_handles])]

    def publish(self, adapter: Exported) -> None:
        """Every sampler loads the adapter and must report back the version and checksum it now serves."""
        self.adapter = adapter
        self._check(self._control([self.handles[k].load_adapter.remote(adapter.ref) for k in self.live]),
                    adapter.payload)

    def ensure(self, adapter: Exported) -> None:
        """Before sampling: a sampler that serves anything else (a restarted actor serves
        nothing) gets the adapter again; then all must match."""
        self.adapter = adapter
        expected = (adapter.payload.version, adapter.payload.checksum)
        stale = [s for s, v in zip(self.live_handles, self.serving()) if v != expected]
        if stale:
            self._control([s.load_adapter.remote(adapter.ref) for s in stale])
        self._check(self.serving(), adapter.payload)

    @property
    def live_handles(self) -> list:
        return [self.handles[k] for k in self.live]

    def close(self) -> None:
        try:
            self.calls.get([s.close.remote() for s in self.handles])
        except Exception:  # noqa: BLE001 - a dead sampler has nothing left to clean
            pass

    @staticmethod
    def _check(served, payload: AdapterPayload) -> None:
        for i, (version, checksum) in enumerate(served):
            if (version, checksum) != (payload.version, payload.checksum):
                raise AdapterMismatch(
                    f"sampler {i} serves adapter v{version} ({str(checksum)[:12]}), expected "
                    f"v{payload.version} ({payload.checksum[:12]}); refusing to sample from a stale adapter"
                )


class JudgePool:
    """The judge actors: chunks with back-pressure (judge_queue), and their usage counters."""

    def __init__(self, handles: list, in_flight: int, name: str):
        self.handles, self.in_flight, self.name = handles, in_flight, name

    def judge(self, chunks: list[tuple], on_done: Callable[[int], None] = lambda i: None) -> tuple[list[list[Judgment]], dict]:
        """The chunks' judgments, and the judges' usage over them (tokens, cost, requests;
        empty for judges that report none) as `judge_*` metrics."""
        return asyncio.run(self._judge(chunks, on_done))

    async def _judge(self, chunks, on_done):
        queue: asyncio.Queue = asyncio.Queue()
        for item in enumerate(chunks):
            queue.put_nowait(item)
        return await self.judge_queue(queue, len(chunks), on_done)

    async def judge_queue(self, queue: asyncio.Queue, total: int, on_done: Callable[[int], None] = lambda i: None):
        """As judge(), for `total` chunks arriving on `queue` as (index, chunk) while judging runs."""
        parts = await judge_queue(self.handles, queue, total, self.in_flight, self.name, on_done)
        reports = await asyncio.gather(*(h.take_usage.remote() for h in self.handles), return_exceptions=True)
        usage: dict[str, float] = {}
        for report in reports:  # a dead actor's counters are lost with it; the judgments are not
            for k, v in (report if isinstance(report, dict) else {}).items():
                usage[f"judge_{k}"] = usage.get(f"judge_{k}", 0) + v
        return parts, usage


class LearnerHandle:
    """The learner, one call per method; `export` leaves the adapter where samplers can fetch it."""

    def __init__(self, handle, calls: Calls | None = None):
        self.handle, self.calls = handle, calls or RayCalls()

    def _call(self, method: str, *args):
        return self._get(method, getattr(self.handle, method).remote(*args))

    def _get(self, method: str, ref):
        try:
            return self.calls.get(ref)
        except ActorLost as e:
            raise ActorLost(f"the learner actor died during {method}() ({e}); the run stopped there, with "
                            "every finished step saved: run the same command with --resume to continue") from None

    def begin(self, examples: list, iteration: int) -> int:
        return self._call("begin", examples, iteration)

    def step(self) -> dict:
        return self._call("step")

    def finish(self, version: int | None = None) -> dict:
        return self._call("finish", version)

    def state_bytes(self) -> bytes:
        return self._call("state_bytes")

    def restore(self, payload: AdapterPayload, state: bytes | None, version: int | None = None) -> None:
        self._call("restore", payload, state, version)

    def export(self) -> Exported:
        ref = self.handle.export.remote()
        return Exported(ref, self._get("export", ref))
