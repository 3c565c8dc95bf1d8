"""The steps of an iteration — sample, judge, learn, record — each returning a typed result.

The schedules (loop/schedules/) decide the order the steps run in; the steps do the work and
save it. Each finished step is written to the run directory before state.json records it, so
a run killed at any moment resumes from the last finished step and redoes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import cast

from alignloop.loop.config import RunConfig
from alignloop.loop.cursor import AheadStep, Metrics, Step
from alignloop.loop.data import PromptStream
from alignloop.loop.metrics import is_spending, judgment_metrics, sample_metrics
from alignloop.loop.progress import phase, summary_line
from alignloop.loop.roles.protocols import Exported, JudgeChunk, JudgePool, Roles, SampleChunk, SamplerPool
from alignloop.loop.store import RunState, RunStore
from alignloop.loop.tracking import Tracking
from alignloop.policies.adapter import AdapterMismatch
from alignloop.policies.objectives.base import Example
from alignloop.records import Judgment, Prompt, Sample
from alignloop.records.metrics import merge_metrics


class JudgeErrorRate(RuntimeError):
    """More judgments failed than judging.max_error_rate allows: the run stops, resumable."""


class JudgeCostCap(JudgeErrorRate):
    """The judges reached judging.max_cost_usd or max_cost_usd_per_iteration: the run stops
    before spending more, resumable (with a higher cap) as the error budget is."""


@dataclass(frozen=True)
class Judged:
    """An iteration's prompts, samples and judgments (one per sample, in sample order), and the
    metrics its sample and judge steps recorded."""

    prompts: list[Prompt]
    samples: list[Sample]
    judgments: list[Judgment]
    metrics: Metrics


@dataclass(frozen=True)
class Learned:
    """The adapter an iteration learned, and the learn step's metrics."""

    adapter: Exported
    metrics: Metrics


class Steps:
    """The steps over one run's roles and store. `ahead` (sampling ahead): the cursor lists the
    sample and judge steps that finished beyond the learner's iteration; otherwise it holds the
    current iteration's metrics so far."""

    def __init__(
        self, cfg: RunConfig, store: RunStore, roles: Roles, prompts: list[Prompt], tracking: Tracking | None = None
    ):
        self.cfg, self.store, self.roles, self.prompts, self.tracking = cfg, store, roles, prompts, tracking
        self.state = store.load_state() or RunState()
        self.ahead = bool(cfg.asynchronous.max_staleness)
        cursor = self.state.cursor
        if self.ahead and cursor.ahead is None:
            cursor.ahead = {}
        self.stream = PromptStream(
            len(prompts), cfg.data.prompts_per_iteration, cfg.seed, cfg.data.shuffle, cursor.stream
        )
        self.lock = threading.Lock()  # sampling ahead, steps finish on two threads
        self.clock = time.perf_counter()

    # set-up --------------------------------------------------------------------------------
    def restore(self) -> Exported:
        """Bring the learner to the last finished learn step (or the run's origin), have every
        sampler serve its adapter, and return it."""
        start = self.store.starting_point(self.state)
        if start is not None:
            self.roles.learner.restore(*start, self.state.adapter_version)
        adapter = self.roles.learner.export()
        if start is not None and adapter.payload.checksum != self.state.adapter_checksum:
            raise AdapterMismatch(
                f"restored adapter v{self.state.adapter_version} does not match the checksum in {self.store.state_path}"
            )
        self.roles.samplers.publish(adapter)
        return adapter

    def save(self, i: int, step: Step, metrics: Metrics) -> None:
        """Record `step` of iteration i as finished, with the iteration's metrics so far."""
        with self.lock:
            cursor = self.state.cursor
            if not self.ahead:
                self.state.iteration, self.state.step = i, step
                cursor.stream, cursor.pending = self.stream.state(), dict(metrics)
            else:  # the state is the learner's; the steps ahead of it are listed
                assert cursor.ahead is not None
                cursor.ahead[i] = AheadStep(step, dict(metrics))
                if step == "sample":
                    cursor.stream = self.stream.state()
            self.store.save_state(self.state)

    # sample and judge ----------------------------------------------------------------------
    def next_prompts(self) -> list[Prompt]:
        return [self.prompts[j] for j in self.stream.next_batch()]

    def sample(self, i: int) -> tuple[list[Prompt], list[Sample], Metrics]:
        """Iteration i's prompts and their samples from the published adapter, saved."""
        prompts = self.next_prompts()
        samples, elapsed = sample_prompts(self.roles.samplers, self.cfg, prompts, self.state.base + i)
        metrics = {"sample_s": elapsed, "n_prompts": len(prompts), **sample_metrics(samples)}
        self.store.save_samples(i, prompts, samples)
        self.save(i, "sample", metrics)
        return prompts, samples, metrics

    def sample_and_judge(self, i: int) -> Judged:
        """The sample and judge steps overlapped (judging.streaming), each saved and recorded as
        the steps one after the other are: the samples as soon as sampling ends, while the
        judges are still at work."""
        prompts = self.next_prompts()
        sampled: Metrics = {}

        def on_sampled(samples: list[Sample], elapsed: float) -> None:
            sampled.update(sample_s=elapsed, n_prompts=len(prompts), **sample_metrics(samples))
            self.store.save_samples(i, prompts, samples)
            self.save(i, "sample", sampled)

        with self.spending(i, {}):
            samples, judgments, extra = stream_prompts(
                self.roles.samplers, self.roles.judges, self.cfg, prompts, self.state.base + i, on_sampled
            )
        metrics = merge_metrics(sampled, extra, judgment_metrics(judgments))
        return self.record_judgments(i, Judged(prompts, samples, judgments, metrics))

    def judge(
        self, i: int, prompts: list[Prompt], samples: list[Sample], metrics: Metrics, retry_failed: bool = False
    ) -> Judged:
        """Judge, save the judgments, and only then check the error budget: a run stopped
        here has not finished the step, so --resume comes back to it, keeps the successful
        judgments of the saved attempt and judges again only the failed ones."""
        if self.cfg.judge.type == "human":
            return self.judge_by_people(i, prompts, samples, metrics)
        previous = self.store.load_judgments(i) if retry_failed else None
        with self.spending(i, metrics if retry_failed else {}):
            judgments, extra = judge_samples(self.roles.judges, self.cfg, prompts, samples, previous)
        # Every request counts, the stopped attempt's too: its usage was saved with the state.
        for k, v in metrics.items():
            if retry_failed and is_spending(k):
                extra[k] = extra.get(k, 0) + v
        fresh = merge_metrics(extra, judgment_metrics(judgments))
        # A stopped attempt's judge metrics are replaced by this one's (its spending is in them).
        metrics = merge_metrics({k: v for k, v in metrics.items() if k not in fresh}, fresh)
        return self.record_judgments(i, Judged(prompts, samples, judgments, metrics))

    def judge_by_people(self, i: int, prompts: list[Prompt], samples: list[Sample], metrics: Metrics) -> Judged:
        """judge.type human (judges/human.py): the first time, the judge workers run the other
        judge over every sample and the review queue is written; then (and on every rerun) what
        people have judged is collected. WaitingForJudgments stops the run with the step
        unfinished and its metrics kept, so the rerun comes back here and judges nothing twice."""
        from alignloop.judges.human import HumanJudgeConfig
        from alignloop.loop.review_queue import ReviewQueue, WaitingForJudgments

        human = self.cfg.judge
        assert isinstance(human, HumanJudgeConfig)  # judge() routes only judge.type human here
        queue = ReviewQueue(self.store.iter_dir(i))
        failed = queue.failed_other(samples) if queue.exists() else None
        if not queue.exists() or failed is not None:  # the first time, or again where it failed
            other, extra = judge_samples(self.roles.judges, self.cfg, prompts, samples, failed)
            for k, v in metrics.items():  # every request counts, the failed attempt's too
                if failed is not None and is_spending(k):
                    extra[k] = extra.get(k, 0) + v
            if failed is None:
                queue.write(human, samples, other)
            else:
                queue.rewrite_other(other)
            metrics = merge_metrics({k: v for k, v in metrics.items() if k not in extra}, extra)
        try:
            judgments, review = queue.collect(human, samples)
        except WaitingForJudgments:
            self.save(i, "sample", metrics)  # the step is not finished; what the other judge spent is kept
            raise
        fresh = merge_metrics(review, judgment_metrics(judgments))
        metrics = merge_metrics({k: v for k, v in metrics.items() if k not in fresh}, fresh)
        return self.record_judgments(i, Judged(prompts, samples, judgments, metrics))

    @contextlib.contextmanager
    def spending(self, i: int, spent: Metrics) -> Iterator[None]:
        """The judges may spend, within the block, what is left of iteration i's cap (`spent`:
        a stopped attempt's metrics) and of the run's (its finished iterations, and those judged
        ahead of the learner); after it, with no cap (an eval gate judges with the same workers)."""
        judging = self.cfg.judging
        if judging.max_cost_usd is None and judging.max_cost_usd_per_iteration is None:
            yield
            return
        now = float(spent.get("judge_cost_usd") or 0.0)
        left = [judging.max_cost_usd_per_iteration - now] if judging.max_cost_usd_per_iteration else []
        if judging.max_cost_usd is not None:
            with self.lock:
                ahead = [a.metrics for k, a in (self.state.cursor.ahead or {}).items() if k != i]
            before = sum(float(m.get("judge_cost_usd") or 0.0) for m in [*self.store.read_metrics(), *ahead])
            left.append(judging.max_cost_usd - before - now)
        self.roles.judges.limit_spending(max(0.0, min(left)))
        try:
            yield
        finally:
            self.roles.judges.limit_spending(None)

    def record_judgments(self, i: int, judged: Judged) -> Judged:
        """Save the judgments, then check the cost cap and the error budget; only within them
        is the judge step done."""
        self.store.save_judgments(i, judged.judgments)
        try:
            check_cost_cap(self.cfg, judged, f"iteration {i}", self.store.iter_dir(i))
            check_error_budget(self.cfg, judged.judgments, f"iteration {i}", self.store.iter_dir(i))
        except JudgeErrorRate:
            self.save(i, "sample", judged.metrics)  # the step is not finished; its usage so far is kept
            raise
        self.save(i, "judge", judged.metrics)
        return judged

    def sampled_and_judged(self, i: int, first: Step, metrics: Metrics) -> Judged:
        """Iteration i from step `first` on; the steps before it are read back from the run
        directory, with `metrics`, what they recorded."""
        # People judge after sampling is over: their queue is written once, whole.
        if first == "sample" and self.cfg.judging.streaming and self.cfg.judge.type != "human":
            return self.sample_and_judge(i)
        if first == "sample":
            prompts, samples, metrics = self.sample(i)
        else:
            prompts, samples = self.store.load_samples(i)
        if first != "learn":
            return self.judge(i, prompts, samples, metrics, retry_failed=first == "judge")
        judgments = self.store.load_judgments(i) or []
        check_error_budget(self.cfg, judgments, f"iteration {i}", self.store.iter_dir(i))
        return Judged(prompts, samples, judgments, metrics)

    # learn and record ----------------------------------------------------------------------
    def learn(self, i: int, judged: Judged) -> Learned:
        """Train on iteration i and save what it learned (adapter and optimizer state)."""
        by_id = {p.id: p for p in judged.prompts}
        # Samples without a signal (judge error or nothing said) never reach the objective.
        examples = [Example(by_id[s.prompt_id], s, j) for s, j in zip(judged.samples, judged.judgments) if j.has_signal]
        with phase("training", 0, "step") as bar:
            learned = self.roles.learner.learn(examples, self.state.base + i, self.state.base + i, bar.progress)
        adapter = self.roles.learner.export()
        self.store.save_learned(i, adapter.payload, self.roles.learner.state_bytes())
        # How many versions behind the learner the samples' policy was (0 unless sampling ahead).
        current = self.state.adapter_version
        lag = current - min((s.policy_version for s in judged.samples), default=current)
        return Learned(adapter, merge_metrics(learned, {"policy_lag": lag}))

    def record(self, i: int, adapter: Exported, *parts: Metrics) -> Metrics:
        """Iteration i is done: its metrics, then the state that says so."""
        now = time.perf_counter()
        payload = adapter.payload
        metrics = merge_metrics(
            {"iteration": i},
            *parts,
            {"adapter_version": payload.version, "adapter_checksum": payload.checksum, "iteration_s": now - self.clock},
        )
        self.clock = now  # iteration_s: wall time since the previous record
        self.store.write_metrics(i, metrics)
        with self.lock:
            self.state.iteration, self.state.step = i, "learn"
            self.state.adapter_version, self.state.adapter_checksum = payload.version, payload.checksum
            if self.ahead:
                assert self.state.cursor.ahead is not None
                self.state.cursor.ahead.pop(i, None)
            else:
                self.state.cursor.stream, self.state.cursor.pending = self.stream.state(), {}
            self.store.save_state(self.state)
        self.store.drop_old_learner_state(i)
        print(summary_line(metrics, self.cfg.iterations, self.store.read_metrics()), flush=True)
        return metrics

    def log(self, i: int, judged: Judged) -> None:
        if self.tracking:
            self.tracking.log_iteration(
                i, self.store.read_metrics()[-1], judged.prompts, judged.samples, judged.judgments
            )


def check_cost_cap(cfg: RunConfig, judged: Judged, what: str, where) -> None:
    """Stop (JudgeCostCap) when the judges left samples unjudged because the cost cap was reached."""
    from alignloop.judges.budget import COST_CAP_ERROR

    capped = [j for j in judged.judgments if j.error and j.error.startswith(COST_CAP_ERROR)]
    if not capped:
        return
    judging = cfg.judging
    caps = [f"judging.{k} {v:g}" for k, v in judging.model_dump().items() if k.startswith("max_cost_usd") and v]
    raise JudgeCostCap(
        f"{what}: the judges reached their cost cap ({', '.join(caps)}) having spent "
        f"${float(judged.metrics.get('judge_cost_usd') or 0.0):.6f} in this judge step; {len(capped)}/"
        f"{len(judged.judgments)} sample(s) were not sent to the judge. The judgments are saved in {where}; raise "
        "the cap (--set judging.max_cost_usd=... or judging.max_cost_usd_per_iteration=...) and rerun with "
        "--resume, which judges only those samples"
    )


def check_error_budget(cfg: RunConfig, judgments: list[Judgment], what: str, where, remedy: str | None = None) -> None:
    """Stop (JudgeErrorRate) when more judgments failed than judging.max_error_rate allows."""
    errors = [j for j in judgments if j.error]
    rate = len(errors) / max(1, len(judgments))
    if rate > cfg.judging.max_error_rate:
        remedy = (
            remedy
            or f"fix the judge and rerun with --resume, which judges again only the {len(errors)} failed sample(s)"
        )
        raise JudgeErrorRate(
            f"{what}: {len(errors)}/{len(judgments)} judgments failed ({rate:.0%} > "
            f"judging.max_error_rate {cfg.judging.max_error_rate:.0%}); first error: {errors[0].error}. "
            f"The judgments are saved in {where}; {remedy}"
        )


# the phases over the role pools ----------------------------------------------------------------
def sampler_chunks(cfg: RunConfig, prompts: list[Prompt], step: int, n: int | None = None) -> list[SampleChunk]:
    """The sampler calls for `prompts`: each chunk is seeded by (seed, step, offset), so which
    replica samples it does not matter."""
    size = cfg.sampler.batch_size
    return [SampleChunk(prompts[s : s + size], step, _seed(cfg.seed, step, s), n) for s in range(0, len(prompts), size)]


def sample_prompts(
    samplers: SamplerPool, cfg: RunConfig, prompts: list[Prompt], step: int, n: int | None = None
) -> tuple[list[Sample], float]:
    """Every prompt's responses, in prompt order, chunked over the sampler replicas, and the
    seconds it took."""
    chunks = sampler_chunks(cfg, prompts, step, n)
    with phase("sampling", len(prompts), "prompt") as bar:
        parts = samplers.generate(chunks, lambda c, part: bar.update(len(chunks[c].prompts)))
    return [s for part in parts for s in part], bar.elapsed


def judge_chunks(cfg: RunConfig, prompts: list[Prompt], samples: list[Sample]) -> list[JudgeChunk]:
    """The judge calls for `samples`: runs of judging.chunk_size, in sample order."""
    by_id = {p.id: p for p in prompts}
    size = cfg.judging.chunk_size
    return [
        JudgeChunk([by_id[s.prompt_id] for s in samples[c : c + size]], samples[c : c + size])
        for c in range(0, len(samples), size)
    ]


def judge_samples(
    judges: JudgePool,
    cfg: RunConfig,
    prompts: list[Prompt],
    samples: list[Sample],
    previous: list[Judgment] | None = None,
) -> tuple[list[Judgment], Metrics]:
    """One judgment per sample, in sample order, and the phase's metrics (time, usage). With
    `previous` (an earlier attempt), its successful judgments are kept and only the rest judged."""
    kept = {j.sample_id: j for j in previous or () if j.error is None}
    if getattr(cfg.judge, "mode", "sample") == "group":
        # A group's scores are relative to each other: one failed sample sends its whole group again.
        again = {s.prompt_id for s in samples if s.id not in kept}
        kept = {s.id: kept[s.id] for s in samples if s.id in kept and s.prompt_id not in again}
    todo = [s for s in samples if s.id not in kept]
    chunks = judge_chunks(cfg, prompts, todo)
    with phase("judging", len(todo), "sample") as bar:
        parts, usage = judges.judge(chunks, lambda c: bar.update(len(chunks[c].samples)))
    fresh = {j.sample_id: j for part in parts for j in part}
    judgments = [kept[s.id] if s.id in kept else fresh[s.id] for s in samples]
    retried = {"n_rejudged": len(todo)} if previous is not None else {}
    return judgments, merge_metrics({"judge_s": bar.elapsed}, retried, usage)


def stream_prompts(
    samplers: SamplerPool,
    judges: JudgePool,
    cfg: RunConfig,
    prompts: list[Prompt],
    step: int,
    on_sampled: Callable[[list[Sample], float], None],
) -> tuple[list[Sample], list[Judgment], Metrics]:
    """Sampling and judging overlapped: each judge chunk goes to the judges as soon as the
    sampler chunks holding its samples are done, while the rest is still being sampled. The
    judge chunks are the ones judging after sampling makes (the same samples in the same
    groups), so the judgments are too. `on_sampled(samples, seconds)` runs once sampling is
    done, while judging goes on. Returns the samples, the judgments and the judge metrics."""
    return asyncio.run(_stream(samplers, judges, cfg, prompts, step, on_sampled))


async def _stream(
    samplers: SamplerPool,
    judges: JudgePool,
    cfg: RunConfig,
    prompts: list[Prompt],
    step: int,
    on_sampled: Callable[[list[Sample], float], None],
) -> tuple[list[Sample], list[Judgment], Metrics]:
    loop = asyncio.get_running_loop()
    chunks = sampler_chunks(cfg, prompts, step)
    per, size = cfg.sampler.samples_per_prompt, cfg.judging.chunk_size
    total = len(prompts) * per
    slots: list[Sample | None] = [None] * total
    missing = [min(size, total - c) for c in range(0, total, size)]  # samples each judge chunk still waits for
    queue: asyncio.Queue = asyncio.Queue()
    judge_start: list[float] = []

    def arrived(c: int, part: list[Sample]) -> None:  # on the event loop, as each sampler chunk ends
        offset = c * cfg.sampler.batch_size * per  # every prompt has `per` samples, in prompt order
        for k, sample in enumerate(part[: len(chunks[c].prompts) * per]):
            slots[offset + k] = sample
            j = (offset + k) // size
            missing[j] -= 1
            if missing[j] == 0:
                judge_start[:] = judge_start or [time.perf_counter()]
                ready = cast(list[Sample], slots[j * size : (j + 1) * size])  # none missing: all filled
                queue.put_nowait((j, judge_chunks(cfg, prompts, ready)[0]))

    with phase("sampling", len(prompts), "prompt") as sample_bar, phase("judging", total, "sample") as judge_bar:

        def done(c: int, part: list[Sample]) -> None:  # on the sampling thread
            loop.call_soon_threadsafe(arrived, c, part)
            sample_bar.update(len(chunks[c].prompts))

        judging = asyncio.ensure_future(
            judges.judge_queue(queue, len(missing), lambda j: judge_bar.update(min(size, total - j * size)))
        )
        try:
            await loop.run_in_executor(None, samplers.generate, chunks, done)
        except BaseException:
            judging.cancel()
            raise
        await asyncio.sleep(0)  # the last chunk's arrival, queued by the sampling thread, runs first
        sample_s = time.perf_counter() - sample_bar.start
        if None in slots:  # a sampler broke its contract of `per` samples per prompt
            judging.cancel()
            raise AssertionError(f"the samplers returned {total - slots.count(None)} of {total} samples")
        filled = cast(list[Sample], slots)  # the same list, now that no slot is None
        on_sampled(list(filled), sample_s)
        parts, usage = await judging
    by_id = {j.sample_id: j for part in parts for j in part}
    judgments = [by_id[s.id] for s in filled]
    judge_s = judge_bar.elapsed - (judge_start[0] - judge_bar.start if judge_start else 0)
    return filled, judgments, merge_metrics({"judge_s": judge_s, "sample_judge_s": judge_bar.elapsed}, usage)


def _seed(seed: int, iteration: int, offset: int) -> int:
    return (seed * 1_000_003 + iteration * 10_007 + offset) % (2**31)
