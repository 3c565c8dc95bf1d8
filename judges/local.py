"""What the local-model judges (reward_model, critique_model) share: where the model runs,
and running its forward passes one at a time, off the event loop."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Sequence
from typing import Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from alignloop.records import Judgment, Prompt, Sample


class LocalModelOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str = Field(description="Local Hugging Face directory or hub id of the judge model.")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where the judge model runs (auto: cuda if visible)."
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="Judge weights dtype.")
    batch_size: int = Field(8, gt=0, description="Samples per forward pass.")
    threads: int | None = Field(None, gt=0, description="torch threads (None: every core of the node).")


def judge_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("judge.device is 'cuda' but no CUDA GPU is visible to this judge actor")
    return device


Options = TypeVar("Options", bound=LocalModelOptions)


class LocalModelJudge(Generic[Options]):
    """Base of the local-model judges: subclasses load their model and implement
    `judge_batch(prompts, samples) -> list[Judgment]` (blocking). `name` is the subclass
    config's own `name` field (recorded as `judge` on every judgment)."""

    def __init__(self, config: Options, name: str):
        import torch

        self.config = config
        self.name = name
        self.device = judge_device(config.device)
        # By default it may use every core (inside a Ray actor torch would otherwise get
        # OMP_NUM_THREADS=1); judging overlaps sampling when it streams (judging.streaming) and
        # learning when the run samples ahead, where `threads` splits the cores.
        torch.set_num_threads(config.threads or os.cpu_count() or 1)
        self._lock = threading.Lock()

    async def judge(self, prompts: Sequence[Prompt], samples: Sequence[Sample]) -> list[Judgment]:
        pairs = list(zip(prompts, samples, strict=True))
        size = self.config.batch_size
        out: list[Judgment] = []
        for b in range(0, len(pairs), size):
            ps, ss = zip(*pairs[b : b + size])
            out += await self.in_thread(self.judge_batch_or_error, list(ps), list(ss))
        return out

    def judge_batch_or_error(self, prompts: list[Prompt], samples: list[Sample]) -> list[Judgment]:
        """A batch that raises (out of memory, a bad input) costs that batch, as errors."""
        try:
            return self.judge_batch(prompts, samples)
        except Exception as e:  # noqa: BLE001 - recorded on each judgment, never a made-up reward
            return [Judgment(sample_id=s.id, judge=self.name, error=f"{type(e).__name__}: {e}") for s in samples]

    def judge_batch(self, prompts: list[Prompt], samples: list[Sample]) -> list[Judgment]:
        raise NotImplementedError

    async def in_thread(self, fn: Callable, *args):
        """Run `fn` in a worker thread, one at a time: the event loop stays free to accept
        the next chunk, and two chunks never fight over the same cores."""

        def locked():
            with self._lock:
                return fn(*args)

        return await asyncio.to_thread(locked)
