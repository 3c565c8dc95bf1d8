"""The judge pool over worker handles (Ray actors, or in-process objects behind the same
handle API): chunks with back-pressure, a broken worker's chunk retried on another, every
failure an error judgment (counted, never a made-up reward), and the judges' usage."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any

from alignloop.loop.roles.protocols import JudgeChunk, actor_error
from alignloop.records import Judgment, Prompt, Sample


class JudgeWorker:
    """Runs one judge backend. A call that raises becomes an error judgment for each sample
    of the chunk: counted, never a made-up reward."""

    def __init__(self, judge_cfg) -> None:
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

    async def limit_spending(self, usd: float | None) -> None:
        """What this worker's judge may spend from now on (None: no cap); judges that cost
        nothing, or keep no count of it, have no limit_spending and ignore it."""
        limit = getattr(self.backend, "limit_spending", None)
        if limit is not None:
            limit(usd)

    async def take_usage(self) -> dict[str, float]:
        """The judge's counters (requests, tokens, cost...) since the last call: one
        iteration's worth when the cycle asks once per judge step. {} for judges that keep none."""
        usage = getattr(self.backend, "usage", None)
        if usage is None:
            return {}
        now = dict(usage())
        taken, self._taken = self._taken, now
        return {k: v - taken.get(k, 0) for k, v in now.items()}


def judge_name(judge_cfg: Any) -> str:
    return getattr(judge_cfg, "name", None) or judge_cfg.type


async def judge_queue(
    handles: list,
    queue: asyncio.Queue,
    total: int,
    in_flight: int,
    judge_name: str,
    on_done: Callable[[int], None] = lambda i: None,
) -> list[list[Judgment]]:
    """Judge `total` chunks that arrive on `queue` as (index, JudgeChunk), possibly while a
    producer is still making them (streaming); results come back in index order.

    Back-pressure: each worker has at most `in_flight` chunks outstanding and takes the next
    one only when one returns, so a fast worker does more and nothing piles up inside a slow
    one. JudgeWorker turns every failure of its judge into error judgments, so a call that
    raises means the worker itself is broken (its actor died, or its judge could not be
    built): it gets no more chunks, and its chunk is tried once more on another worker. Chunks
    left when no worker is left become error judgments, counted and retried by --resume.
    `handles[k].judge.remote(...)` may return a Ray ObjectRef or any awaitable."""
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
            if k not in live:  # its worker died while this slot waited: the chunk goes back
                queue.put_nowait(item)
                return
            i, chunk = item
            try:
                part = await handles[k].judge.remote(chunk.prompts, chunk.samples)
            except Exception as e:  # noqa: BLE001 - a worker failure is an error on its chunk
                live.discard(k)
                last_error[:] = [f"judge actor failed: {actor_error(e)}"]
                if live and i not in requeued:
                    requeued.add(i)
                    queue.put_nowait(item)
                else:
                    finish(i, _chunk_error(chunk, judge_name, last_error[0]))
                return
            finish(i, part)

    if total:
        await asyncio.gather(*(slot(k) for k in range(len(handles)) for _ in range(in_flight)))
    while len(results) < total:  # no worker is left: what remains (or is yet to come) is an error
        item = await queue.get()
        if item is not None:
            finish(item[0], _chunk_error(item[1], judge_name, last_error[0]))
    return [results[i] for i in range(total)]


def _chunk_error(chunk: JudgeChunk, judge_name: str, error: str) -> list[Judgment]:
    return [Judgment(sample_id=s.id, judge=judge_name, error=error) for s in chunk.samples]


class JudgeWorkers:
    """The judge pool: chunks with back-pressure (judge_queue), and the workers' usage counters."""

    def __init__(self, handles: list, in_flight: int, name: str):
        self.handles, self.in_flight, self.name = handles, in_flight, name

    def limit_spending(self, usd: float | None) -> None:
        """What the next judge step may spend (None: no cap), shared equally by the workers: each
        stops at its share, so none waits on another to learn what is left."""
        share = None if usd is None else usd / len(self.handles)

        async def tell() -> None:  # a dead worker is found out, and its chunks moved, by the judge step
            await asyncio.gather(*(h.limit_spending.remote(share) for h in self.handles), return_exceptions=True)

        asyncio.run(tell())

    def judge(
        self, chunks: list[JudgeChunk], on_done: Callable[[int], None] = lambda i: None
    ) -> tuple[list[list[Judgment]], dict[str, float]]:
        """The chunks' judgments, and the judges' usage over them (tokens, cost, requests;
        empty for judges that report none) as `judge_*` metrics."""
        return asyncio.run(self._judge(chunks, on_done))

    async def _judge(
        self, chunks: list[JudgeChunk], on_done: Callable[[int], None]
    ) -> tuple[list[list[Judgment]], dict[str, float]]:
        queue: asyncio.Queue = asyncio.Queue()
        for item in enumerate(chunks):
            queue.put_nowait(item)
        return await self.judge_queue(queue, len(chunks), on_done)

    async def judge_queue(
        self, queue: asyncio.Queue, total: int, on_done: Callable[[int], None] = lambda i: None
    ) -> tuple[list[list[Judgment]], dict[str, float]]:
        """As judge(), for `total` chunks arriving on `queue` as (index, JudgeChunk) while judging runs."""
        parts = await judge_queue(self.handles, queue, total, self.in_flight, self.name, on_done)
        reports = await asyncio.gather(*(h.take_usage.remote() for h in self.handles), return_exceptions=True)
        usage: dict[str, float] = {}
        for report in reports:  # a dead worker's counters are lost with it; the judgments are not
            for k, v in (report if isinstance(report, dict) else {}).items():
                usage[f"judge_{k}"] = usage.get(f"judge_{k}", 0) + v
        return parts, usage
