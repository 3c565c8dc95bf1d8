"""Sampling backends. Each takes prompts and returns Samples from the adapter it serves, and
loads published adapters through `load_adapter(payload) -> (version, checksum)`.

    hf     policies/samplers/hf.py     transformers + PEFT, batched generate or its own loop (decode.py), CPU or one GPU
    vllm   policies/samplers/vllm.py   a vLLM engine, one LoRARequest per adapter version

Importing this package imports torch (the transformers sampler); vLLM is imported only when a
vLLM sampler is built.
"""

from alignloop.policies.samplers.hf import HFSampler
from alignloop.policies.samplers.vllm import VLLMSampler

# `sampler.backend` -> the class the sampler actors run.
SAMPLERS: dict[str, type] = {"hf": HFSampler, "vllm": VLLMSampler}


def sampler_class(backend: str) -> type:
    return SAMPLERS[backend]
