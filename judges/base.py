"""The Judge protocol: one async, batched call from samples to judgments.

A judge returns exactly one Judgment per sample, in order. A field left None means "no
signal"; a failure is a Judgment with `error` set and no verdict or score, never a made-up
reward. Judges that call an API run many requests concurrently inside that one call.

Optionally a judge also has `usage() -> dict[str, float]`: running totals (requests, tokens,
cost_usd, ...) that the cycle reports per iteration as `judge_*` metrics.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from alignloop.records import Judgment, Prompt, Sample


@runtime_checkable
class Judge(Protocol):
    name: str

    async def judge(self, prompts: Sequence[Prompt], samples: Sequence[Sample]) -> list[Judgment]:
        """`prompts[i]` is the prompt `samples[i]` answers."""
        ...
