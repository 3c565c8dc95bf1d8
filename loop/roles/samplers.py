"""The sampler pool over replica handles (Ray actors, or in-process objects behind the same
handle API): chunks spread over the replicas, adapters published and verified once per
version, a replica that died or lost its adapter recovered without losing its chunk."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from alignloop.loop.roles.protocols import ActorLost, Exported, SampleChunk
from alignloop.policies.adapter import AdapterMismatch, AdapterPayload
from alignloop.records import Sample

# How long a restarting sampler (its constructor loads the model again) may take to answer.
RESTART_TIMEOUT_S = 300


class Calls(Protocol):
    """How the handles' futures resolve: Ray's object refs, or finished in-process calls."""

    def get(self, futures, timeout: float | None = None): ...

    def each_settled(self, futures: dict): ...


class SamplerReplicas:
    """The sampler replicas: chunks round-robin; every generate call names the adapter it must
    sample from, so a replica serving anything else (a restarted actor serves nothing) refuses
    it, is given the adapter again and samples the chunk then."""

    def __init__(self, handles: list, calls: Calls, answer_timeout_s: float | None = None):
        """`answer_timeout_s`: how long a control call (load an adapter) may wait; a sampler
        that Ray is restarting where no node can take it never answers."""
        self.handles, self.calls, self.timeout = handles, calls, answer_timeout_s
        self.adapter: Exported | None = None  # what every replica serves, verified
        self.live = list(range(len(handles)))

    # publication ---------------------------------------------------------------------------
    def publish(self, adapter: Exported) -> float:
        """Every live replica loads the adapter and must report back its version and checksum;
        done once per version: publishing what is already served costs nothing."""
        if self.adapter is not None and _key(self.adapter.payload) == _key(adapter.payload):
            return 0.0
        start = time.perf_counter()
        served = self._control([self.handles[k].load_adapter.remote(adapter.ref) for k in self.live])
        self._check(served, adapter.payload)
        self.adapter = adapter
        return time.perf_counter() - start

    def _reload(self, k: int) -> None:
        """Replica k lost the published adapter (restarted): it loads it again, verified."""
        assert self.adapter is not None
        served = self.calls.get(self.handles[k].load_adapter.remote(self.adapter.ref), timeout=self.timeout)
        self._check([served], self.adapter.payload)

    def _control(self, futures):
        try:
            return self.calls.get(futures, timeout=self.timeout)
        except ActorLost as e:
            raise ActorLost(
                f"a sampler actor died or stopped answering ({e}); every finished step is saved: "
                "run the same command with --resume (on a cluster, once its nodes are back, or "
                "with sampler.resources that the remaining nodes offer)",
                e.restarting,
            ) from None

    @staticmethod
    def _check(served, payload: AdapterPayload) -> None:
        for i, (version, checksum) in enumerate(served):
            if (version, checksum) != _key(payload):
                raise AdapterMismatch(
                    f"sampler {i} serves adapter v{version} ({str(checksum)[:12]}), expected "
                    f"v{payload.version} ({payload.checksum[:12]}); refusing to sample from a stale adapter"
                )

    # sampling ------------------------------------------------------------------------------
    def generate(
        self, chunks: list[SampleChunk], on_done: Callable[[int, list[Sample]], None] = lambda i, part: None
    ) -> list[list[Sample]]:
        """Every chunk's samples, in chunk order; `on_done(i, samples)` as each finishes.

        A replica that dies mid-chunk is restarted by Ray (max_restarts): it gets the adapter
        again and its chunk is sampled again, on it or, if it is gone for good, on another
        replica. Chunks are seeded by their own content, so the retried chunk gives the same
        samples. A chunk is retried once."""
        if self.adapter is None:
            raise AdapterMismatch("nothing is published to the samplers yet; refusing to sample")
        expect = _key(self.adapter.payload)
        results: list = [None] * len(chunks)
        todo = {i: self.live[i % len(self.live)] for i in range(len(chunks))}
        retried: set[int] = set()
        while todo:
            futures = {
                i: self.handles[k].generate.remote(c.prompts, c.step, c.seed, c.n, expect)
                for i, k in todo.items()
                for c in [chunks[i]]
            }
            replica, todo = dict(todo), {}
            for i, result in self.calls.each_settled(futures):
                if not isinstance(result, Exception):
                    results[i] = result
                    on_done(i, result)
                    continue
                if not isinstance(result, (ActorLost, AdapterMismatch)):
                    raise result  # the sampler itself failed: retrying would fail the same way
                if i in retried:
                    raise ActorLost(
                        f"sampler {replica[i]} failed twice on the same chunk ({result}); run the "
                        "same command with --resume to continue"
                    ) from None
                retried.add(i)
                todo[i] = self.recover(replica[i], result)
        return results

    def recover(self, k: int, error: Exception) -> int:
        """The replica to retry a chunk of replica k on: k itself once it serves the published
        adapter again (after Ray restarted it), else another live one."""
        deadline = time.monotonic() + (self.timeout or RESTART_TIMEOUT_S)
        assert self.adapter is not None  # a replica can only lose an adapter that was published
        while k in self.live:
            try:
                self._reload(k)
                what = "lost its adapter" if isinstance(error, AdapterMismatch) else "died"
                print(
                    f"sampler {k} {what} ({error}); restarted, serving adapter v{self.adapter.payload.version} "
                    "again, retrying its chunk",
                    flush=True,
                )
                return k
            except ActorLost as e:
                if not e.restarting or time.monotonic() > deadline:
                    self.live.remove(k)  # out of restarts (or never back): the others take its share
                else:
                    time.sleep(0.5)  # Ray is restarting it; calls fail fast until it is back
        if not self.live:
            raise ActorLost(
                f"every sampler actor has died (last: {error}); run the same command with --resume to continue"
            )
        print(f"sampler {k} is gone ({error}); its chunk goes to sampler {self.live[0]}", flush=True)
        return self.live[0]

    def close(self) -> None:
        try:
            self.calls.get([s.close.remote() for s in self.handles])
        except Exception:  # noqa: BLE001 - a dead sampler has nothing left to clean
            pass


def _key(payload: AdapterPayload) -> tuple[int, str]:
    return payload.version, payload.checksum
