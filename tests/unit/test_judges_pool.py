"""The judge pool and failure semantics of the judge step, driven without Ray: fake actor
handles around plain JudgeWorkers (tests/judge_fakes.py)."""

from __future__ import annotations

import asyncio

import pytest

from alignloop.loop.roles.judges import JudgeWorker
from alignloop.loop.steps import JudgeErrorRate
from alignloop.loop.store import read_jsonl, write_jsonl
from alignloop.records import Judgment, Prompt, Sample
from tests.judge_fakes import judge, make_steps, prompts_and_samples

HERE = "tests.unit.test_judges_pool"
CALLS: list[str] = []  # sample ids FlakyJudge was asked about, across instances
BROKEN: set[str] = set()  # sample ids FlakyJudge fails on right now


class FlakyJudge:
    """Fails on the samples in BROKEN (an outage the user later fixes); sleeps `delay` per call."""

    def __init__(self, delay: float = 0.0):
        self.delay, self.name, self.calls = delay, "flaky", 0

    async def judge(self, prompts, samples):
        CALLS.extend(s.id for s in samples)
        self.calls += 1
        await asyncio.sleep(self.delay)
        return [
            Judgment(sample_id=s.id, judge=self.name, error="HTTP 503 after 5 attempts")
            if s.id in BROKEN
            else Judgment(sample_id=s.id, verdict="positive", score=0.5, critique=f"ok {s.id}", judge=self.name)
            for s in samples
        ]

    def usage(self):
        return {"requests": self.calls * 2, "cost_usd": self.calls * 0.25}


@pytest.fixture(autouse=True)
def reset():
    CALLS.clear()
    BROKEN.clear()


def flaky(delay=0.0):
    return {"type": "python", "target": f"{HERE}:FlakyJudge", "options": {"delay": delay}}


def test_results_in_sample_order_with_bounded_chunks_in_flight_per_actor(tmp_path):
    cycle = make_steps(flaky(0.01), tmp_path, actors=3, chunk_size=2, in_flight=2)
    prompts, samples = prompts_and_samples([f"r{i}" for i in range(25)])
    judgments, _ = judge(cycle, prompts, samples)
    assert [j.sample_id for j in judgments] == [s.id for s in samples]
    assert sorted(CALLS) == [s.id for s in samples], "every sample judged exactly once"
    handles = cycle.roles.judges.handles
    assert max(h.max_active for h in handles) == 2 and all(h.max_active <= 2 for h in handles)
    assert sum(h.calls for h in handles) - 3 == 13  # 13 chunks, plus one take_usage per actor


def test_usage_is_summed_over_actors_per_iteration(tmp_path):
    cycle = make_steps(flaky(), tmp_path, actors=2, chunk_size=3)
    prompts, samples = prompts_and_samples([f"r{i}" for i in range(12)])
    _, metrics = judge(cycle, prompts, samples)
    assert (metrics["judge_requests"], metrics["judge_cost_usd"]) == (8, 1.0)  # 4 chunks
    _, metrics = judge(cycle, prompts, samples[:3])
    assert (metrics["judge_requests"], metrics["judge_cost_usd"]) == (2, 0.25), "counters are per call"


def test_a_dead_actor_hands_its_chunk_to_the_others(tmp_path):
    cycle = make_steps(flaky(), tmp_path, actors=3, chunk_size=2)
    handles = cycle.roles.judges.handles
    handles[0].broken = RuntimeError("The actor died unexpectedly before finishing this task.")
    prompts, samples = prompts_and_samples([f"r{i}" for i in range(10)])
    judgments, _ = judge(cycle, prompts, samples)
    assert all(j.error is None for j in judgments) and [j.sample_id for j in judgments] == [s.id for s in samples]
    assert handles[0].calls == 1 + 1, "a failed actor gets no second chunk (the +1 is take_usage)"


def test_when_every_actor_is_dead_every_sample_is_an_error(tmp_path):
    cycle = make_steps(flaky(), tmp_path, actors=2, chunk_size=2)
    for h in cycle.roles.judges.handles:
        h.broken = RuntimeError("ActorDiedError: ConfigError: environment variable OPENAI_API_KEY is not set")
    prompts, samples = prompts_and_samples([f"r{i}" for i in range(7)])
    judgments, metrics = judge(cycle, prompts, samples)
    assert [j.sample_id for j in judgments] == [s.id for s in samples]
    assert all(j.verdict is None and "judge actor failed" in j.error and "OPENAI_API_KEY" in j.error for j in judgments)
    assert metrics["n_judge_errors"] == 7 and "judge_requests" not in metrics


def write_sampled_iteration(cycle, i: int, prompts: list[Prompt], samples: list[Sample]) -> None:
    """What the sample step leaves behind: its files, then state.json saying it finished."""
    d = cycle.store.iter_dir(i)
    write_jsonl(d / "prompts.jsonl", prompts)
    write_jsonl(d / "samples.jsonl", samples)
    cycle.save(i, "sample", {"n_samples": len(samples)})


def judge_step(steps):
    """The iteration's steps from where the run directory says it stands, up to learning."""
    i, first = steps.state.next_step()
    return steps.sampled_and_judged(i, first, steps.state.cursor.pending or {})


def test_error_rate_stops_the_run_and_resume_rejudges_only_the_failed(tmp_path):
    prompts, samples = prompts_and_samples([f"r{i}" for i in range(10)])
    first = make_steps(flaky(), tmp_path, actors=2, chunk_size=3, max_error_rate=0.2)
    write_sampled_iteration(first, 1, prompts, samples)
    learned = []
    failed_ids = {"s001", "s004", "s007"}
    BROKEN.update(failed_ids)

    with pytest.raises(
        JudgeErrorRate,
        match=r"3/10 judgments failed \(30% > judging.max_error_rate 20%\).*"
        r"--resume, which judges again only the 3 failed sample\(s\)",
    ):
        judge_step(first)
    saved = read_jsonl(first.store.iter_dir(1) / "judgments.jsonl", Judgment)
    assert {j.sample_id for j in saved if j.error} == failed_ids and not learned
    assert first.store.load_state().step == "sample", "the judge step must not count as finished"

    BROKEN.clear()  # the outage is over; the user reruns with --resume
    CALLS.clear()
    resumed = make_steps(flaky(), tmp_path, actors=2, chunk_size=3, max_error_rate=0.2)
    assert resumed.state.next_step() == (1, "judge")
    judged = judge_step(resumed)
    learned.append(judged.judgments)

    assert sorted(CALLS) == sorted(failed_ids), "only the failed samples may be judged again"
    (final,) = learned
    assert [j.sample_id for j in final] == [s.id for s in samples] and all(j.error is None for j in final)
    kept = {j.sample_id: j for j in saved if not j.error}
    assert all(j == kept[j.sample_id] for j in final if j.sample_id in kept), (
        "successful judgments are kept as they were"
    )
    assert read_jsonl(resumed.store.iter_dir(1) / "judgments.jsonl", Judgment) == final
    assert resumed.store.load_state().step == "judge"
    p = judged.metrics
    assert (p["n_rejudged"], p["n_judge_errors"], p["n_judged"], p["n_samples"]) == (3, 0, 10, 10)


def test_a_fresh_sample_step_never_reuses_old_judgments(tmp_path):
    prompts, samples = prompts_and_samples([f"r{i}" for i in range(4)])
    cycle = make_steps(flaky(), tmp_path, actors=1)
    write_jsonl(
        cycle.store.iter_dir(1) / "judgments.jsonl",
        [Judgment(sample_id=s.id, verdict="negative", judge="stale") for s in samples],
    )
    judgments = cycle.judge(1, prompts, samples, {}, retry_failed=False).judgments
    assert {j.judge for j in judgments} == {"flaky"} and len(CALLS) == 4


class MismatchedJudge:
    name = "mismatched"

    async def judge(self, prompts, samples):
        return [Judgment(sample_id="other", verdict="positive", judge=self.name) for _ in samples]


def test_judge_worker_turns_a_broken_judge_into_error_judgments():
    from alignloop.loop.config import validate_config

    cfg = validate_config(
        {"name": "t", "data": {"path": "p.jsonl"}, "judge": {"type": "python", "target": f"{HERE}:MismatchedJudge"}}
    )
    worker = JudgeWorker(cfg.judge)
    prompts, samples = prompts_and_samples(["a", "b"])
    out = worker.judge_sync([prompts[0]] * 2, samples)
    assert [j.sample_id for j in out] == ["s000", "s001"]
    assert all(j.verdict is None and "do not match the samples one to one" in j.error for j in out)
    assert asyncio.run(worker.take_usage()) == {}, "a judge without usage() reports nothing"


def test_a_stopped_judge_steps_usage_is_counted_after_the_resume(tmp_path):
    """Requests, tokens and cost of the attempt the error budget stopped still reach the metrics."""
    prompts, samples = prompts_and_samples([f"r{i}" for i in range(10)])
    first = make_steps(flaky(), tmp_path, actors=1, chunk_size=10, max_error_rate=0.2)
    write_sampled_iteration(first, 1, prompts, samples)
    BROKEN.update({"s001", "s004", "s007"})
    with pytest.raises(JudgeErrorRate):
        judge_step(first)
    assert first.store.load_state().cursor.pending["judge_requests"] == 2, "the stopped attempt's usage is saved"
    BROKEN.clear()
    resumed = make_steps(flaky(), tmp_path, actors=1, chunk_size=10, max_error_rate=0.2)
    metrics = judge_step(resumed).metrics
    assert metrics["judge_requests"] == 2 + 2 and metrics["judge_cost_usd"] == pytest.approx(0.25 + 0.25)
