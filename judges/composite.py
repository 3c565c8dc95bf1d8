"""Several judges on the same samples, combined in one of two documented ways.

gate  The judges run in order, each seeing only the samples every earlier one passed
      (verdict positive). A sample's judgment is the first negative one, else the last
      judge's: e.g. cheap rules first, and only responses that pass them cost an API call.
      A gate failure is final, with the gate's critique; its score is the gate's own, or
      `gate_fail_score` when set (so a gate failure can never outscore a judged sample).
all   Every judge sees every sample. The verdict is positive only if every judge that gave
      one said positive; the score is the weighted mean of the scores given (`weights`,
      default equal); the critiques are joined, each under its judge's name, and their spans
      merged.

In both modes an error is an error: if any judge that saw a sample failed on it, the
combined judgment carries the error(s) and no verdict or score. `judge` on a combined
judgment reads "<composite name>:<deciding judge>" in gate mode and the composite's name in
all mode.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from alignloop.records import Judgment, Prompt, Sample, merged_spans

if TYPE_CHECKING:  # at run time judges/__init__.py resolves it through model_rebuild
    from alignloop.judges import JudgeConfig


class CompositeJudgeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["composite"] = "composite"
    name: str = Field("composite", description="Recorded as `judge` on every judgment.")
    mode: Literal["gate", "all"] = Field(
        "gate", description="gate: in order, stop at the first negative; all: combine every judge."
    )
    judges: list[JudgeConfig] = Field(min_length=1, description="The judges, each chosen by `type` (gate: in order).")
    weights: list[float] | None = Field(None, description="all mode: score weight per judge (None: equal).")
    gate_fail_score: float | None = Field(
        None, description="gate mode: score of a gate failure (None: the gate's own)."
    )

    @model_validator(mode="after")
    def _consistent(self) -> CompositeJudgeConfig:
        names = [j.name for j in self.judges]
        if len(set(names)) != len(names):
            raise ValueError(
                f"judge names {names} repeat; give each judge a distinct `name` (critiques are labelled by it)"
            )
        if self.weights is not None:
            if self.mode != "all":
                raise ValueError("weights apply to mode: all only; remove them or set mode: all")
            if len(self.weights) != len(self.judges) or any(w < 0 for w in self.weights) or not sum(self.weights) > 0:
                raise ValueError(f"weights must be {len(self.judges)} non-negative numbers, one per judge, not all 0")
        return self


class CompositeJudge:
    def __init__(self, config: CompositeJudgeConfig):
        from alignloop.judges import build_judge

        self.config = config
        self.name = config.name
        self.judges = [build_judge(c) for c in config.judges]

    async def judge(self, prompts: Sequence[Prompt], samples: Sequence[Sample]) -> list[Judgment]:
        if self.config.mode == "gate":
            return await self.gate(list(prompts), list(samples))
        return await self.all(list(prompts), list(samples))

    def usage(self) -> dict[str, float]:
        """The children's token, cost and request counters, summed."""
        total: dict[str, float] = {}
        for j in self.judges:
            for k, v in (j.usage() if hasattr(j, "usage") else {}).items():
                total[k] = total.get(k, 0) + v
        return total

    # gate ------------------------------------------------------------------------------------
    async def gate(self, prompts: list[Prompt], samples: list[Sample]) -> list[Judgment]:
        final: dict[str, Judgment] = {}
        spent: dict[str, float] = {s.id: 0.0 for s in samples}
        todo = list(range(len(samples)))
        for depth, judge in enumerate(self.judges):
            if not todo:
                break
            last = depth == len(self.judges) - 1
            out = await judge.judge([prompts[i] for i in todo], [samples[i] for i in todo])
            passed = []
            for i, j in zip(todo, out, strict=True):
                spent[j.sample_id] += j.latency_s
                if last or j.error or j.verdict != "positive":
                    final[j.sample_id] = self.decided(j, judge.name, is_gate=not last)
                else:
                    passed.append(i)
            todo = passed
        return [final[s.id].model_copy(update={"latency_s": spent[s.id]}) for s in samples]

    def decided(self, j: Judgment, by: str, is_gate: bool) -> Judgment:
        update: dict[str, str | float] = {"judge": f"{self.name}:{by}"}
        if is_gate and j.error is None and self.config.gate_fail_score is not None:
            update["score"] = self.config.gate_fail_score
        return j.model_copy(update=update)

    # all -------------------------------------------------------------------------------------
    async def all(self, prompts: list[Prompt], samples: list[Sample]) -> list[Judgment]:
        per_judge = await asyncio.gather(*(j.judge(prompts, samples) for j in self.judges))
        return [self.combine(s, [out[k] for out in per_judge]) for k, s in enumerate(samples)]

    def combine(self, sample: Sample, parts: list[Judgment]) -> Judgment:
        names = [j.name for j in self.judges]
        latency = max(p.latency_s for p in parts)  # the judges ran side by side
        errors = [f"{n}: {p.error}" for n, p in zip(names, parts) if p.error]
        if errors:
            return Judgment(sample_id=sample.id, judge=self.name, latency_s=latency, error="; ".join(errors))
        verdicts = [p.verdict for p in parts if p.verdict is not None]
        verdict = None if not verdicts else "positive" if all(v == "positive" for v in verdicts) else "negative"
        weights = self.config.weights or [1.0] * len(parts)
        scored = [(w, p.score) for w, p in zip(weights, parts) if p.score is not None]
        total = sum(w for w, _ in scored)
        score = sum(w * x for w, x in scored) / total if scored and total > 0 else None
        critique = "\n".join(f"[{n}] {p.critique}" for n, p in zip(names, parts) if p.critique) or None
        # The parts' spans merged (each kept once, in order); their critiques say why.
        spans = merged_spans(s for p in parts for s in p.spans or ())
        return Judgment(
            sample_id=sample.id,
            verdict=verdict,
            score=score,
            critique=critique,
            judge=self.name,
            latency_s=latency,
            spans=spans or None,
            unlocated_quotes=sum(p.unlocated_quotes for p in parts),
        )
