"""The roles the cycle talks to, as Protocols, and the typed values that cross them.

Each role has a Ray implementation (loop/roles/ray.py builds them as actors) and an
in-process one (loop/roles/local.py); tests/unit/test_roles.py checks that both satisfy the
Protocols below, so the steps and schedules never ask where or how a role runs.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from alignloop.policies.adapter import AdapterPayload
from alignloop.policies.objectives.base import Example
from alignloop.records import Judgment, Prompt, Sample


@dataclass(frozen=True)
class Exported:
    """A published adapter: `ref` is what travels to the samplers (for Ray, the learner's own
    object, so the bytes never pass back through the driver), `payload` the driver's copy to save."""

    ref: Any
    payload: AdapterPayload


@dataclass(frozen=True)
class SampleChunk:
    """One sampler call: `n` responses per prompt (None: samples_per_prompt), the draw seeded
    by `seed` alone, so which replica samples it does not matter; `step` names the samples."""

    prompts: list[Prompt]
    step: int
    seed: int
    n: int | None = None


@dataclass(frozen=True)
class JudgeChunk:
    """One judge call: samples in sample order, each with its prompt."""

    prompts: list[Prompt]
    samples: list[Sample]


class ActorLost(RuntimeError):
    """A role's process died (killed, out of memory, its node gone) and the run cannot go on
    without it; everything finished is saved, and --resume continues. `restarting`: Ray is
    bringing the actor back (it may answer again shortly)."""

    def __init__(self, message: str, restarting: bool = False):
        super().__init__(message)
        self.restarting = restarting


def actor_error(e: BaseException) -> str:
    """One line: Ray's headline and, after its traceback, the line that names the cause
    (e.g. "ConfigError: environment variable OPENAI_API_KEY is not set")."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in str(e).splitlines() if line.strip()]
    text = lines[0][:300] if lines else ""
    if len(lines) > 1:
        text += f" ... {lines[-1][:500]}"
    return f"{type(e).__name__}: {text}"


class Publication(Protocol):
    """Adapter publication: make every sampler serve `adapter` and verify it (version and
    checksum) once per version; the seconds it took (0 when it already serves it)."""

    def publish(self, adapter: Exported) -> float: ...


class SamplerPool(Publication, Protocol):
    """Sampler replicas that sample from the published adapter and never from another: a
    replica that lost it (e.g. restarted) gets it again before its chunk is sampled."""

    def generate(
        self, chunks: list[SampleChunk], on_done: Callable[[int, list[Sample]], None] = ...
    ) -> list[list[Sample]]: ...

    def close(self) -> None: ...


class JudgePool(Protocol):
    """Judge workers: chunks in, judgments in chunk order out, with the judges' usage counters."""

    name: str

    def judge(
        self, chunks: list[JudgeChunk], on_done: Callable[[int], None] = ...
    ) -> tuple[list[list[Judgment]], dict[str, float]]: ...

    async def judge_queue(
        self, queue: asyncio.Queue, total: int, on_done: Callable[[int], None] = ...
    ) -> tuple[list[list[Judgment]], dict[str, float]]: ...

    def limit_spending(self, usd: float | None) -> None: ...


class LearnerRole(Protocol):
    """The learner: one call per iteration; progress reported without a call per step."""

    def learn(
        self,
        examples: list[Example],
        iteration: int,
        version: int | None = None,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> dict[str, float]: ...

    def export(self) -> Exported: ...

    def state_bytes(self) -> bytes: ...

    def restore(self, payload: AdapterPayload, state: bytes | None, version: int | None = None) -> None: ...


class Roles(Protocol):
    """Every role a run needs; `judges_for` gives the judges of another judge config (an
    evaluation's own), shut down with the rest."""

    samplers: SamplerPool
    judges: JudgePool
    learner: LearnerRole

    def judges_for(self, judge_cfg: Any) -> JudgePool: ...

    def placement(self) -> dict: ...

    def shutdown(self) -> None: ...
