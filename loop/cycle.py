"""The online cycle: sample -> judge -> learn -> publish, for as many iterations as asked.

Each finished step is written to the run directory before state.json records it, so a run
killed at any moment resumes (`--resume`) from the last finished step and redoes nothing.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict

import ray
import yaml
from tqdm import tqdm

from loop.actors import Actors, judge_pool, map_chunks, start_ray
from loop.config import ConfigError, RunConfig, resume_conflicts, to_yaml
from loop.data import PromptStream, load_prompts
from records import Judgment, Prompt, Sample
from loop.store import RunState, RunStore, atomic_write_bytes, atomic_write_dir, atomic_write_text, read_jsonl, write_jsonl
from policies.adapter import AdapterPayload
from policies.model import preflight
from policies.objectives.base import Example


class JudgeErrorRate(RuntimeError):
    pass


def prepare_run_dir(cfg: RunConfig, resume: bool, overwrite: bool) -> RunStore:
    """Refuse to mix two configs in one run directory, or to clobber progress by accident."""
    store = RunStore(cfg.resolved_run_dir)
    if overwrite:
        store.reset()
    elif store.has_progress():
        if not resume:
            raise ConfigError(
                f"{store.root} already holds a run; pass --resume to continue it or --overwrite to start over"
            )
        saved = yaml.safe_load(store.config_path.read_text()) if store.config_path.exists() else {}
        conflicts = resume_conflicts(saved, cfg)
        if conflicts:
            raise ConfigError(
                f"{store.root} holds a run with a different config (fields: {', '.join(conflicts)}); "
                "resume with the same config, use another run name, or pass --overwrite to start over"
            )
    atomic_write_text(store.config_path, to_yaml(cfg))
    return store


class Cycle:
    def __init__(self, cfg: RunConfig, store: RunStore, actors: Actors, prompts: list[Prompt]):
        self.cfg, self.store, self.actors = cfg, store, actors
        self.prompts = prompts
        self.state = store.load_state() or RunState()
        self.stream = PromptStream(
            len(prompts), cfg.data.prompts_per_iteration, cfg.seed, cfg.data.shuffle, self.state.data.get("stream")
        )
        self.payload: AdapterPayload | None = None
        self.pending: dict = dict(self.state.data.get("pending", {}))

    # set-up ----------------------------------------------------------------------------------
    def restore(self) -> None:
        """Bring the learner to the last finished learn step and publish its adapter."""
        version = self.state.adapter_version
        if version > 0:
            last = self.store.iter_dir(version)
            payload = AdapterPayload.from_dir(last / "adapter", version)
            state = (last / "learner_state.pt").read_bytes()
            ray.get(self.actors.learner.restore.remote(payload, state))
        self.payload = ray.get(self.actors.learner.export.remote())
        if version > 0 and self.payload.checksum != self.state.adapter_checksum:
            raise RuntimeError(f"restored adapter v{version} does not match the checksum in state.json")
        self.actors.publisher.publish(self.payload)

    def save_state(self, iteration: int, step: str) -> None:
        self.state.iteration, self.state.step = iteration, step
        self.state.data = {"stream": self.stream.state(), "pending": self.pending}
        self.store.save_state(self.state)

    # the loop --------------------------------------------------------------------------------
    def run(self) -> list[dict]:
        self.restore()
        iteration, step = self.state.next_step()
        while iteration <= self.cfg.iterations:
            self.iteration(iteration, step)
            iteration, step = iteration + 1, "sample"
        return self.store.read_metrics()

    def iteration(self, i: int, first_step: str) -> None:
        d = self.store.iter_dir(i)
        if first_step == "sample":
            self.pending = {}
            prompts, samples = self.sample(i)
            write_jsonl(d / "prompts.jsonl", prompts)
            write_jsonl(d / "samples.jsonl", samples)
            self.save_state(i, "sample")
        else:
            prompts, samples = read_jsonl(d / "prompts.jsonl", Prompt), read_jsonl(d / "samples.jsonl", Sample)
        if first_step in ("sample", "judge"):
            judgments = self.judge_step(i, prompts, samples, retry_failed=first_step == "judge")
        else:
            judgments = read_jsonl(d / "judgments.jsonl", Judgment)
            self.check_errors(i, judgments)
        self.learn(i, prompts, samples, judgments)

    # steps -----------------------------------------------------------------------------------
    def sample(self, i: int) -> tuple[list[Prompt], list[Sample]]:
        prompts = [self.prompts[j] for j in self.stream.next_batch()]
        self.actors.publisher.ensure(self.payload)
        size = self.cfg.sampler.batch_size
        chunks = [(prompts[s : s + size], i, _seed(self.cfg.seed, i, s)) for s in range(0, len(prompts), size)]
        with phase("sampling", len(prompts), "prompt") as bar:
            parts = map_chunks(self.actors.samplers, "generate", chunks, lambda c: bar.update(len(chunks[c][0])))
        samples = [s for part in parts for s in part]
        tokens = sum(len(s.token_ids or ()) for s in samples)
        self.pending.update(
            sample_s=bar.elapsed, n_prompts=len(prompts), n_samples=len(samples), tokens_sampled=tokens,
            finished_rate=sum(s.finish_reason == "stop" for s in samples) / len(samples),
            policy_version=samples[0].policy_version,
        )
        return prompts, samples

    def judge_step(self, i: int, prompts: list[Prompt], samples: list[Sample], retry_failed: bool) -> list[Judgment]:
        """Judge, save the judgments, and only then check the error budget: a run stopped
        here has not finished the step, so --resume comes back to it, keeps the successful
        judgments of the saved attempt and judges again only the failed ones."""
        path = self.store.iter_dir(i) / "judgments.jsonl"
        previous = read_jsonl(path, Judgment) if retry_failed and path.exists() else None
        judgments = self.judge(prompts, samples, previous)
        write_jsonl(path, judgments)
        self.check_errors(i, judgments)
        self.save_state(i, "judge")
        return judgments

    def judge(self, prompts: list[Prompt], samples: list[Sample], previous: list[Judgment] | None = None) -> list[Judgment]:
        """One judgment per sample, in sample order. With `previous` (an earlier attempt),
        its successful judgments are kept and only the rest are judged."""
        kept = {j.sample_id: j for j in previous or () if j.error is None}
        todo = [s for s in samples if s.id not in kept]
        by_id = {p.id: p for p in prompts}
        size = self.cfg.judging.chunk_size
        chunks = [([by_id[s.prompt_id] for s in todo[c : c + size]], todo[c : c + size]) for c in range(0, len(todo), size)]
        with phase("judging", len(todo), "sample") as bar:
            parts, usage = asyncio.run(self.judge_chunks(chunks, lambda c: bar.update(len(chunks[c][1]))))
        fresh = {j.sample_id: j for part in parts for j in part}
        judgments = [kept[s.id] if s.id in kept else fresh[s.id] for s in samples]
        retried = {"n_rejudged": len(todo)} if previous is not None else {}
        self.pending.update(judge_s=bar.elapsed, **retried, **judgment_metrics(judgments), **usage)
        return judgments

    async def judge_chunks(self, chunks: list[tuple], on_done) -> tuple[list[list[Judgment]], dict]:
        """The chunks' judgments, and the judges' usage over them (tokens, cost, requests;
        empty for judges that report none) as `judge_*` metrics."""
        handles, cfg = self.actors.judges, self.cfg
        name = getattr(cfg.judge, "name", None) or cfg.judge.type
        parts = await judge_pool(handles, chunks, cfg.judging.in_flight, name, on_done)
        reports = await asyncio.gather(*(h.take_usage.remote() for h in handles), return_exceptions=True)
        usage: dict[str, float] = {}
        for report in reports:  # a dead actor's counters are lost with it; the judgments are not
            for k, v in (report if isinstance(report, dict) else {}).items():
                usage[f"judge_{k}"] = usage.get(f"judge_{k}", 0) + v
        return parts, usage

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

    def learn(self, i: int, prompts: list[Prompt], samples: list[Sample], judgments: list[Judgment]) -> None:
        by_id = {p.id: p for p in prompts}
        # Samples without a signal (judge error or nothing said) never reach the objective.
        examples = [Example(by_id[s.prompt_id], s, j) for s, j in zip(samples, judgments) if j.has_signal]
        learner = self.actors.learner
        n_steps = ray.get(learner.begin.remote(examples, i))
        with phase("training", n_steps, "step") as bar:
            for _ in range(n_steps):
                ray.get(learner.step.remote())
                bar.update(1)
        learned = ray.get(learner.finish.remote())
        payload: AdapterPayload = ray.get(learner.export.remote())
        d = self.store.iter_dir(i)
        atomic_write_dir(d / "adapter", payload.files())
        atomic_write_bytes(d / "learner_state.pt", ray.get(learner.state_bytes.remote()))
        t = time.perf_counter()
        self.actors.publisher.publish(payload)
        self.payload = payload
        metrics = {
            "iteration": i, **self.pending, **learned, "adapter_version": payload.version,
            "adapter_checksum": payload.checksum, "publish_s": time.perf_counter() - t,
        }
        self.store.write_metrics(i, metrics)
        self.state.adapter_version, self.state.adapter_checksum = payload.version, payload.checksum
        self.pending = {}
        self.save_state(i, "learn")
        # Only the newest optimizer state is needed to resume; older ones are dead weight.
        (self.store.iter_dir(i - 1) / "learner_state.pt").unlink(missing_ok=True)
        print(summary_line(metrics, self.cfg.iterations, self.store.read_metrics()), flush=True)


def judgment_metrics(judgments: list[Judgment]) -> dict:
    verdicts = [j.verdict for j in judgments if j.error is None and j.verdict is not None]
    scores = [j.score for j in judgments if j.error is None and j.score is not None]
    errors = sum(j.error is not None for j in judgments)
    return {
        "pass_rate": sum(v == "positive" for v in verdicts) / len(verdicts) if verdicts else None,
        "mean_score": sum(scores) / len(scores) if scores else None,
        "n_judged": len(judgments) - errors,
        "n_judge_errors": errors,
        "judge_error_rate": errors / max(1, len(judgments)),
    }


def summary_line(m: dict, total: int, history: list[dict]) -> str:
    first = history[0].get("pass_rate") if history else None

    def f(x, spec=".2f"):
        return "-" if x is None else format(x, spec)

    delta = "" if first is None or m.get("pass_rate") is None or m["iteration"] == 1 else f" ({m['pass_rate'] - first:+.2f} vs iter 1)"
    return (
        f"iter {m['iteration']}/{total} | pass {f(m.get('pass_rate'))}{delta} | score {f(m.get('mean_score'))} | "
        f"loss {f(m.get('loss'), '.3f')} | train {m.get('n_train', 0)} | tokens {m.get('tokens_sampled', 0)} | "
        f"errors {m.get('n_judge_errors', 0)} | sample {f(m.get('sample_s'), '.0f')}s judge {f(m.get('judge_s'), '.1f')}s "
        f"learn {f(m.get('learn_s'), '.0f')}s publish {f(m.get('publish_s'), '.1f')}s"
    )


def _seed(seed: int, iteration: int, offset: int) -> int:
    return (seed * 1_000_003 + iteration * 10_007 + offset) % (2**31)


class Phase:
    """Times one phase and, on an interactive terminal, shows its progress bar (silent in
    logs and CI, where the per-iteration summary line is the record)."""

    def __init__(self, name: str, total: int, unit: str):
        self.bar = tqdm(total=total, desc=f"  {name}", unit=unit, leave=False,
                        disable=not sys.stderr.isatty(), file=sys.stderr)
        self.start, self.elapsed = time.perf_counter(), 0.0

    def update(self, n: int) -> None:
        self.bar.update(n)


@contextmanager
def phase(name: str, total: int, unit: str):
    p = Phase(name, total, unit)
    try:
        yield p
    finally:
        p.elapsed = time.perf_counter() - p.start
        p.bar.close()


def run(cfg: RunConfig, resume: bool = False, overwrite: bool = False) -> list[dict]:
    store = prepare_run_dir(cfg, resume, overwrite)
    state = store.load_state()
    if state and state.next_step()[0] > cfg.iterations:
        print(f"{store.root}: all {cfg.iterations} iterations are done (raise `iterations` to continue)")
        return store.read_metrics()
    prompts = load_prompts(cfg.data.path)
    if not (cfg.ray.address or os.environ.get("RAY_ADDRESS")):
        preflight(cfg.model.path)  # on a cluster the workers' nodes, not the driver's, must have it
    start_ray(cfg.ray)
    actors = Actors(cfg)
    try:
        return Cycle(cfg, store, actors, prompts).run()
    finally:
        actors.shutdown()
