"""The online cycle: sample -> judge -> learn -> publish, for as many iterations as asked.

Each finished step is written to the run directory before state.json records it, so a run
killed at any moment resumes (`--resume`) from the last finished step and redoes nothing.
The cycle talks to the facades of loop/actors.py only, so it runs the same on Ray actors and
on in-process objects (LocalActors).
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from contextlib import contextmanager

from alignloop.loop.actors import Actors, Exported, JudgePool, SamplerPool, start_ray
from alignloop.loop.config import RunConfig
from alignloop.loop.data import PromptStream, load_data
from alignloop.loop.lock import DirLock
from alignloop.loop.metrics import is_spending, judgment_metrics, sample_metrics
from alignloop.loop.progress import phase, placement_line, summary_line
from alignloop.loop.preflight import attached, preflight_run
from alignloop.loop.store import RunState, RunStore, check_run_dir, prepare_run_dir
from alignloop.loop.tracking import Tracking
from alignloop.policies.adapter import AdapterMismatch, AdapterPayload
from alignloop.policies.model import cache_dir, ensure_embedded, needs_conversion
from alignloop.policies.objectives.base import Example
from alignloop.records import Judgment, Prompt, Sample


class JudgeErrorRate(RuntimeError):
    pass



class Cycle:
    def __init__(self, cfg: RunConfig, store: RunStore, actors, prompts: list[Prompt], tracking=None):
        self.cfg, self.store, self.actors, self.tracking = cfg, store, actors, tracking
        self.prompts = prompts
        self.state = store.load_state() or RunState()
        self.stream = PromptStream(
            len(prompts), cfg.data.prompts_per_iteration, cfg.seed, cfg.data.shuffle, self.state.data.get("stream")
        )
        self.adapter: Exported | None = None
        self.pending: dict = dict(self.state.data.get("pending", {}))
        # Sampling ahead (asynchronous.max_staleness): the sample and judge steps finished
        # beyond the learner's last iteration, with their metrics, and the prompt stream's
        # position after the last saved samples (what a resumed run draws from).
        self.ahead: dict[int, dict] = {int(k): v for k, v in self.state.data.get("ahead", {}).items()}
        self.stream_saved = self.state.data.get("stream")
        self.adapters: dict[int, Exported] = {}  # run iteration -> the adapter it learned (0: the start)
        self.lock = threading.Condition()
        self.clock = time.perf_counter()

    @property
    def payload(self):
        return self.adapter.payload if self.adapter else None

    # set-up ----------------------------------------------------------------------------------
    def restore(self) -> None:
        """Bring the learner to the last finished learn step (or the run's origin) and publish its adapter."""
        start = self.store.starting_point(self.state)
        if start is not None:
            self.actors.learner.restore(*start, self.state.adapter_version)
        self.adapter = self.actors.learner.export()
        if start is not None and self.adapter.payload.checksum != self.state.adapter_checksum:
            raise AdapterMismatch(
                f"restored adapter v{self.state.adapter_version} does not match the checksum in {self.store.state_path}"
            )
        self.actors.samplers.publish(self.adapter)
        self.adapters = {self.state.last_learned(): self.adapter}

    def save_state(self, iteration: int, step: str, adapter: AdapterPayload | None = None) -> None:
        """Record `step` of `iteration` as finished (with `adapter`: the one it learned)."""
        with self.lock:  # sampling ahead, the sample and learn steps finish on two threads
            if adapter is not None:
                self.state.adapter_version, self.state.adapter_checksum = adapter.version, adapter.checksum
            if not self.cfg.asynchronous.max_staleness:
                self.state.iteration, self.state.step = iteration, step
                self.state.data = {"stream": self.stream.state(), "pending": self.pending}
            else:  # the cursor is the learner's; the sample and judge steps ahead of it are listed
                if step == "learn":
                    self.state.iteration, self.state.step = iteration, step
                    self.ahead.pop(iteration, None)
                else:
                    self.ahead[iteration] = {"step": step, "pending": dict(self.pending)}
                    if step == "sample":
                        self.stream_saved = self.stream.state()
                self.state.data = {"stream": self.stream_saved, "ahead": {str(k): v for k, v in sorted(self.ahead.items())}}
            self.store.save_state(self.state)

    # the loop --------------------------------------------------------------------------------
    def run(self) -> list[dict]:
        self.restore()
        return self.run_iterations()

    def run_iterations(self) -> list[dict]:
        """From the step after the last finished one to the last iteration (after restore())."""
        if self.tracking:
            self.tracking.catch_up()
        self.clock = time.perf_counter()
        if self.cfg.asynchronous.max_staleness:
            self.run_ahead()
            return self.store.read_metrics()
        iteration, step = self.state.next_step()
        while iteration <= self.cfg.iterations:
            self.iteration(iteration, step)
            iteration, step = iteration + 1, "sample"
        return self.store.read_metrics()

    def iteration(self, i: int, first_step: str) -> None:
        prompts, samples, judgments = self.sampled_and_judged(i, first_step)
        adapter, learned = self.learn(i, prompts, samples, judgments)
        self.publish(i, adapter, learned)
        self.log(i, prompts, samples, judgments)

    def sampled_and_judged(self, i: int, first_step: str) -> tuple[list[Prompt], list[Sample], list[Judgment]]:
        """Iteration i's prompts, samples and judgments, from `first_step` on (the steps
        before it are read back from the run directory)."""
        if first_step == "sample" and self.cfg.judging.streaming:
            return self.sample_and_judge_step(i)
        prompts, samples = self.sample_step(i) if first_step == "sample" else self.store.load_samples(i)
        if first_step == "learn":
            judgments = self.store.load_judgments(i)
            self.check_errors(i, judgments)
        else:
            judgments = self.judge_step(i, prompts, samples, retry_failed=first_step == "judge")
        return prompts, samples, judgments

    def log(self, i: int, prompts: list[Prompt], samples: list[Sample], judgments: list[Judgment]) -> None:
        if self.tracking:
            self.tracking.log_iteration(i, self.store.read_metrics()[-1], prompts, samples, judgments)

    # steps -----------------------------------------------------------------------------------
    def next_prompts(self) -> list[Prompt]:
        """The next iteration's prompts; its metrics start empty."""
        self.pending = {}
        return [self.prompts[j] for j in self.stream.next_batch()]

    def sample_step(self, i: int) -> tuple[list[Prompt], list[Sample]]:
        prompts = self.next_prompts()
        samples = self.sample(prompts, self.state.base + i)
        self.store.save_samples(i, prompts, samples)
        self.save_state(i, "sample")
        return prompts, samples

    def sample_and_judge_step(self, i: int) -> tuple[list[Prompt], list[Sample], list[Judgment]]:
        """The sample and judge steps overlapped (judging.streaming), each saved and recorded
        as the steps one after the other are: the samples as soon as sampling ends, while the
        judges are still at work."""
        prompts = self.next_prompts()
        self.actors.samplers.ensure(self.adapter)

        def sampled(samples: list[Sample], elapsed: float) -> None:
            self.pending.update(sample_s=elapsed, n_prompts=len(prompts), **sample_metrics(samples))
            self.store.save_samples(i, prompts, samples)
            self.save_state(i, "sample")

        samples, judgments, extra = stream_prompts(self.actors.samplers, self.actors.judges, self.cfg, prompts,
                                                   self.state.base + i, sampled)
        self.pending.update(**extra, **judgment_metrics(judgments))
        self.record_judgments(i, judgments)
        return prompts, samples, judgments

    def sample(self, prompts: list[Prompt], step: int, n: int | None = None) -> list[Sample]:
        """n (default samples_per_prompt) responses per prompt from the current adapter;
        `step` (the series-wide iteration) seeds the draw and names the samples."""
        self.actors.samplers.ensure(self.adapter)
        samples, elapsed = sample_prompts(self.actors.samplers, self.cfg, prompts, step, n)
        self.pending.update(sample_s=elapsed, n_prompts=len(prompts), **sample_metrics(samples))
        return samples

    def judge_step(self, i: int, prompts: list[Prompt], samples: list[Sample], retry_failed: bool) -> list[Judgment]:
        """Judge, save the judgments, and only then check the error budget: a run stopped
        here has not finished the step, so --resume comes back to it, keeps the successful
        judgments of the saved attempt and judges again only the failed ones."""
        previous = self.store.load_judgments(i) if retry_failed else None
        spent = {k: v for k, v in self.pending.items() if is_spending(k)} if retry_failed else {}
        judgments = self.judge(prompts, samples, previous)
        # Every request counts, the stopped attempt's too: its usage was saved with the state.
        for k, v in spent.items():
            self.pending[k] = self.pending.get(k, 0) + v
        self.record_judgments(i, judgments)
        return judgments

    def record_judgments(self, i: int, judgments: list[Judgment]) -> None:
        """Save the judgments, then check the error budget; only within it is the judge step done."""
        self.store.save_judgments(i, judgments)
        try:
            self.check_errors(i, judgments)
        except JudgeErrorRate:
            self.save_state(i, "sample")  # the step is not finished; its usage so far is kept
            raise
        self.save_state(i, "judge")

    def judge(self, prompts: list[Prompt], samples: list[Sample], previous: list[Judgment] | None = None) -> list[Judgment]:
        """One judgment per sample, in sample order. With `previous` (an earlier attempt),
        its successful judgments are kept and only the rest are judged."""
        judgments, extra = judge_samples(self.actors.judges, self.cfg, prompts, samples, previous)
        self.pending.update(**extra, **judgment_metrics(judgments))
        return judgments

    def check_errors(self, i: int, judgments: list[Judgment]) -> None:
        errors = [j for j in judgments if j.error]
        rate = len(errors) / max(1, len(judgments))
        if rate > self.cfg.judging.max_error_rate:
            raise JudgeErrorRate(
                f"iteration {i}: {len(errors)}/{len(judgments)} judgments failed ({rate:.0%} > "
                f"judging.max_error_rate {self.cfg.judging.max_error_rate:.0%}); first error: {errors[0].error}. "
                f"The judgments are saved in {self.store.iter_dir(i)}; fix the judge and rerun with --resume, "
                f"which judges again only the {len(errors)} failed sample(s)"
            )

    def learn(self, i: int, prompts: list[Prompt], samples: list[Sample],
              judgments: list[Judgment]) -> tuple[Exported, dict]:
        """Train on iteration i; returns the new adapter and the learn metrics."""
        by_id = {p.id: p for p in prompts}
        # Samples without a signal (judge error or nothing said) never reach the objective.
        examples = [Example(by_id[s.prompt_id], s, j) for s, j in zip(samples, judgments) if j.has_signal]
        learner = self.actors.learner
        n_steps = learner.begin(examples, self.state.base + i)
        with phase("training", n_steps, "step") as bar:
            for _ in range(n_steps):
                learner.step()
                bar.update(1)
        learned = learner.finish(self.state.base + i)
        # How many versions behind the learner the samples' policy was (0 unless sampling ahead).
        lag = self.state.adapter_version - min((s.policy_version for s in samples), default=self.state.adapter_version)
        return learner.export(), {**learned, "policy_lag": lag}

    def publish(self, i: int, adapter: Exported, learned: dict) -> None:
        """Save the new adapter, send it to every sampler, then record the iteration as done."""
        self.store.save_learned(i, adapter.payload, self.actors.learner.state_bytes())
        t = time.perf_counter()
        self.actors.samplers.publish(adapter)
        self.adapter = adapter
        metrics = {**self.pending, **learned, "publish_s": time.perf_counter() - t}
        self.pending = {}
        self.record(i, adapter.payload, metrics)

    def record(self, i: int, payload: AdapterPayload, metrics: dict) -> None:
        """Iteration i is done: its metrics, then the state that says so."""
        now = time.perf_counter()
        metrics = {"iteration": i, **metrics, "adapter_version": payload.version, "adapter_checksum": payload.checksum,
                   "iteration_s": now - self.clock}  # wall time since the previous record
        self.clock = now
        self.store.write_metrics(i, metrics)
        self.save_state(i, "learn", payload)
        self.store.drop_old_learner_state(i)
        print(summary_line(metrics, self.cfg.iterations, self.store.read_metrics()), flush=True)

    # sampling ahead --------------------------------------------------------------------------
    def run_ahead(self) -> None:
        """asynchronous.max_staleness N: a thread samples and judges iteration j from the
        adapter of iteration j-1-N while the learner trains the iterations before j. The
        adapter each iteration samples from is fixed by that schedule, never by timing, so a
        run is reproducible, and sampling waits for the adapter it needs: the samplers are
        never more than N versions behind the learner (back-pressure). Each step is saved as
        it finishes, on either thread; a resumed run picks up both where they were."""
        n, last = self.cfg.asynchronous.max_staleness, self.cfg.iterations
        first = self.state.last_learned() + 1
        if first == 1:
            self.store.save_start_adapter(self.adapter.payload)
        handoff: queue.Queue = queue.Queue()
        stopped = threading.Event()

        def produce() -> None:
            try:
                for j in range(first, last + 1):
                    entry = self.ahead.get(j, {})
                    first_step = {None: "sample", "sample": "judge", "judge": "learn"}[entry.get("step")]
                    self.pending = dict(entry.get("pending", {}))
                    load_s = 0.0  # only sampling needs an adapter; saved samples are judged as they are
                    if first_step == "sample" and (load_s := self.serve_ahead(max(0, j - 1 - n), stopped)) is None:
                        return  # the learner stopped
                    prompts, samples, judgments = self.sampled_and_judged(j, first_step)
                    handoff.put((prompts, samples, judgments, {**self.pending, "publish_s": load_s}))
            except BaseException as e:  # noqa: BLE001 - raised on the learner's thread, in order
                handoff.put(e)

        producer = threading.Thread(target=produce, name="alignloop-sampling-ahead", daemon=True)
        producer.start()
        try:
            for i in range(first, last + 1):
                item = handoff.get()
                if isinstance(item, BaseException):
                    raise item
                prompts, samples, judgments, pending = item
                adapter, learned = self.learn(i, prompts, samples, judgments)
                self.store.save_learned(i, adapter.payload, self.actors.learner.state_bytes())
                self.record(i, adapter.payload, {**pending, **learned})
                with self.lock:
                    self.adapters[i] = adapter
                    self.lock.notify_all()
                self.log(i, prompts, samples, judgments)
        finally:
            stopped.set()
            with self.lock:
                self.lock.notify_all()
        producer.join()
        # The run ends as a synchronous one does: every sampler serves its last adapter.
        self.adapter = self.adapters[last]
        self.actors.samplers.publish(self.adapter)

    def serve_ahead(self, k: int, stopped: threading.Event) -> float | None:
        """Wait until iteration k's adapter is learned (or read it back from the run
        directory), make every sampler serve it; the seconds that took (None: stopped)."""
        with self.lock:
            while k not in self.adapters and k > self.state.last_learned() and not stopped.is_set():
                self.lock.wait()
            if stopped.is_set():
                return None
            if k not in self.adapters:
                self.adapters[k] = Exported(*[self.store.learned_adapter(k)] * 2)
            self.adapter = self.adapters[k]
            for old in [v for v in self.adapters if v < k]:
                del self.adapters[old]  # no later iteration samples from it
        t = time.perf_counter()
        self.actors.samplers.ensure(self.adapter)
        return time.perf_counter() - t


def sampler_chunks(cfg: RunConfig, prompts: list[Prompt], step: int, n: int | None = None) -> list[tuple]:
    """The sampler calls for `prompts`: each chunk is seeded by (seed, step, offset), so which
    replica samples it does not matter."""
    size = cfg.sampler.batch_size
    return [(prompts[s : s + size], step, _seed(cfg.seed, step, s), n) for s in range(0, len(prompts), size)]


def sample_prompts(samplers: SamplerPool, cfg: RunConfig, prompts: list[Prompt], step: int,
                   n: int | None = None) -> tuple[list[Sample], float]:
    """Every prompt's responses, in prompt order, chunked over the sampler replicas, and the
    seconds it took."""
    chunks = sampler_chunks(cfg, prompts, step, n)
    with phase("sampling", len(prompts), "prompt") as bar:
        parts = samplers.generate(chunks, lambda c, part: bar.update(len(chunks[c][0])))
    return [s for part in parts for s in part], bar.elapsed


def judge_chunks(cfg: RunConfig, prompts: list[Prompt], samples: list[Sample]) -> list[tuple]:
    """The judge calls for `samples`: runs of judging.chunk_size, in sample order."""
    by_id = {p.id: p for p in prompts}
    size = cfg.judging.chunk_size
    return [([by_id[s.prompt_id] for s in samples[c : c + size]], samples[c : c + size])
            for c in range(0, len(samples), size)]


def stream_prompts(samplers: SamplerPool, judges: JudgePool, cfg: RunConfig, prompts: list[Prompt], step: int,
                   on_sampled) -> tuple[list[Sample], list[Judgment], dict]:
    """Sampling and judging overlapped: each judge chunk goes to the judges as soon as the
    sampler chunks holding its samples are done, while the rest is still being sampled. The
    judge chunks are the ones judging after sampling makes (the same samples in the same
    groups), so the judgments are too. `on_sampled(samples, seconds)` runs once sampling is
    done, while judging goes on. Returns the samples, the judgments and the judge metrics."""
    return asyncio.run(_stream(samplers, judges, cfg, prompts, step, on_sampled))


async def _stream(samplers, judges, cfg, prompts, step, on_sampled):
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
        for k, sample in enumerate(part[: len(chunks[c][0]) * per]):
            slots[offset + k] = sample
            j = (offset + k) // size
            missing[j] -= 1
            if missing[j] == 0:
                judge_start[:] = judge_start or [time.perf_counter()]
                queue.put_nowait((j, judge_chunks(cfg, prompts, slots[j * size : (j + 1) * size])[0]))

    with phase("sampling", len(prompts), "prompt") as sample_bar, phase("judging", total, "sample") as judge_bar:
        def done(c: int, part: list[Sample]) -> None:  # on the sampling thread
            loop.call_soon_threadsafe(arrived, c, part)
            sample_bar.update(len(chunks[c][0]))

        judging = asyncio.ensure_future(judges.judge_queue(queue, len(missing), lambda j: judge_bar.update(
            min(size, total - j * size))))
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
        on_sampled(list(slots), sample_s)
        parts, usage = await judging
    by_id = {j.sample_id: j for part in parts for j in part}
    judgments = [by_id[s.id] for s in slots]
    return slots, judgments, {"judge_s": judge_bar.elapsed - (judge_start[0] - judge_bar.start if judge_start else 0),
                              "sample_judge_s": judge_bar.elapsed, **usage}


def judge_samples(judges: JudgePool, cfg: RunConfig, prompts: list[Prompt], samples: list[Sample],
                  previous: list[Judgment] | None = None) -> tuple[list[Judgment], dict]:
    """One judgment per sample, in sample order, and the phase's metrics (time, usage). With
    `previous` (an earlier attempt), its successful judgments are kept and only the rest judged."""
    kept = {j.sample_id: j for j in previous or () if j.error is None}
    todo = [s for s in samples if s.id not in kept]
    chunks = judge_chunks(cfg, prompts, todo)
    with phase("judging", len(todo), "sample") as bar:
        parts, usage = judges.judge(chunks, lambda c: bar.update(len(chunks[c][1])))
    fresh = {j.sample_id: j for part in parts for j in part}
    judgments = [kept[s.id] if s.id in kept else fresh[s.id] for s in samples]
    retried = {"n_rejudged": len(todo)} if previous is not None else {}
    return judgments, {"judge_s": bar.elapsed, **retried, **usage}


def _seed(seed: int, iteration: int, offset: int) -> int:
    return (seed * 1_000_003 + iteration * 10_007 + offset) % (2**31)


def run(cfg: RunConfig, resume: bool = False, overwrite: bool = False) -> list[dict]:
    """A whole run. A config, data or model problem is found before anything is written."""
    store = check_run_dir(cfg, resume, overwrite)
    state = None if overwrite else store.load_state()
    if state and state.next_step()[0] > cfg.iterations:
        print(f"{store.root}: all {cfg.iterations} iterations are done (raise `iterations` to continue)")
        return store.read_metrics()
    prompts = load_data(cfg.data)
    preflight_run(cfg, prompts)
    with DirLock(cfg.resolved_run_dir, "run directory"):
        store = prepare_run_dir(cfg, resume, overwrite)  # checked again: now no one else writes
        with started_actors(cfg) as actors, opened(Tracking(cfg, store)) as tracking:
            store.log_placement(actors.placement())
            return Cycle(cfg, store, actors, prompts, tracking).run()


def convert_embedded_once(path: str) -> None:
    """The embedded model's one-time GGUF conversion, on the driver with a line saying so,
    rather than silently inside the first actor that needs it."""
    if not needs_conversion(path):
        return
    print(f"converting the embedded model {path!r} from GGUF, once, into {cache_dir()} "
          "(about 30 s on a 2-core CPU; later runs reuse it)", flush=True)
    start = time.perf_counter()
    ensure_embedded(path)
    print(f"converted in {time.perf_counter() - start:.0f} s", flush=True)


@contextmanager
def opened(tracking: Tracking):
    try:
        yield tracking
    finally:
        tracking.close()


@contextmanager
def started_actors(cfg: RunConfig):
    """Ray (local or attached) and the run's actors, shut down on exit."""
    if not attached(cfg):
        convert_embedded_once(cfg.model.path)
    start = time.perf_counter()
    start_ray(cfg.ray)
    actors = Actors(cfg)
    try:
        print(f"starting Ray and {actors.describe()}", flush=True)
        actors.wait_ready()
        print(f"actors ready in {time.perf_counter() - start:.0f} s", flush=True)
        if attached(cfg):
            print(placement_line(actors.placement()), flush=True)
        if cfg.round.eval and cfg.round.eval.judge:
            actors.eval_judges = actors.add_judges(cfg.round.eval.judge)
        yield actors
    finally:
        actors.shutdown()
