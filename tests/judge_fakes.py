"""Drive the judge step without Ray: handles whose `.method.remote(...)` call a plain
JudgeWorker and return an awaitable, as a Ray ObjectRef is."""

from __future__ import annotations

import inspect
from pathlib import Path
from types import SimpleNamespace

from pydantic import BaseModel, ConfigDict

from alignloop.loop.config import validate_config
from alignloop.loop.roles.judges import JudgeWorker, JudgeWorkers, judge_name
from alignloop.loop.store import RunStore
from alignloop.records import Message, Prompt, Sample


class FakeHandle:
    """Stands in for a JudgeWorker actor handle; counts the calls it has outstanding."""

    def __init__(self, worker, broken: Exception | None = None):
        self.worker, self.broken = worker, broken
        self.active = self.max_active = self.calls = 0

    def __getattr__(self, method: str):
        fn = getattr(self.worker, method)
        return SimpleNamespace(remote=lambda *args: self._call(fn, args))

    async def _call(self, fn, args):
        self.calls += 1
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            if self.broken is not None:  # as Ray raises for a dead actor
                raise self.broken
            out = fn(*args)
            return await out if inspect.isawaitable(out) else out
        finally:
            self.active -= 1


def prompts_and_samples(texts: list[str]) -> tuple[list[Prompt], list[Sample]]:
    """One prompt per two samples, so chunks mix prompts."""
    prompts = [
        Prompt(id=f"p{i}", messages=[Message(role="user", content=f"Question {i}?")])
        for i in range((len(texts) + 1) // 2)
    ]
    samples = [
        Sample(id=f"s{i:03d}", prompt_id=f"p{i // 2}", response=t, policy_version=0) for i, t in enumerate(texts)
    ]
    return prompts, samples


def make_steps(judge: dict, run_dir: Path, actors: int = 2, handles=None, **judging):
    """The steps over a real RunStore whose judge actors are FakeHandles around JudgeWorkers."""
    from alignloop.loop.steps import Steps

    cfg = validate_config(
        {
            "name": "t",
            "run_dir": str(run_dir),
            "data": {"path": "unused.jsonl", "prompts_per_iteration": 1},
            "judge": judge,
            "judging": {"actors": actors, **judging},
        }
    )
    if handles is None:
        handles = [FakeHandle(JudgeWorker(cfg.judge)) for _ in range(actors)]
    dataset = [Prompt(id="d", messages=[Message(role="user", content="unused")])]  # the judge step draws none
    pool = JudgeWorkers(handles, cfg.judging.in_flight, judge_name(cfg.judge))
    return Steps(cfg, RunStore(run_dir), SimpleNamespace(judges=pool), dataset)


def judge(steps, prompts: list[Prompt], samples: list[Sample]):
    """The judge phase alone: the judgments and the metrics a judge step would record."""
    from alignloop.loop.metrics import judgment_metrics
    from alignloop.loop.steps import judge_samples

    judgments, extra = judge_samples(steps.roles.judges, steps.cfg, prompts, samples)
    return judgments, {**extra, **judgment_metrics(judgments)}


class SlowRules:
    """The rules judge slowed down, as a `type: python` plugin: it holds a run inside its judge
    step long enough for an integration test to kill it there."""

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")
        delay_s: float = 1.0
        max_words: int = 4

    def __init__(self, config: SlowRules.Config):
        from alignloop.judges.rules import RulesJudge, RulesJudgeConfig

        self.config, self.name = config, "slow-rules"
        self.rules = RulesJudge(
            RulesJudgeConfig(name=self.name, checks=[{"type": "max_words", "limit": config.max_words}])
        )

    async def judge(self, prompts, samples):
        import asyncio

        await asyncio.sleep(self.config.delay_s)
        return [j.model_copy(update={"latency_s": 0.0}) for j in await self.rules.judge(prompts, samples)]
