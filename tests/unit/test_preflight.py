"""A run that does not fit its model is refused before Ray starts (issue 22): a missing adapter
directory, LoRA target modules the model does not have, max_new_tokens beyond the context and
a prompt longer than it. Each was found only when an actor died; now each is a ConfigError
(exit 2) naming the field and what to set. On the tiny random model (context 512)."""

from __future__ import annotations

import pytest

from alignloop.loop.config import ConfigError, validate_config
from alignloop.loop.data import load_data
from alignloop.loop.preflight import adaptable_modules, check_model_fits, preflight_run
from alignloop.records import Message, Prompt
from tests.conftest import WORDS, tiny_config, write_prompts


def config(tiny_model, tmp_path, **over):
    return validate_config(tiny_config(tiny_model, write_prompts(tmp_path / "p.jsonl"), tmp_path / "run", **over))


def prompt(words: int, id: str = "long") -> Prompt:
    return Prompt(id=id, messages=[Message(role="user", content=" ".join(WORDS[i % len(WORDS)] for i in range(words)))])


def test_a_run_that_fits_passes(tiny_model, tmp_path):
    cfg = config(tiny_model, tmp_path)
    preflight_run(cfg, load_data(cfg.data))
    check_model_fits(cfg, [prompt(400)])  # 400 words + the template, 6 new tokens: within 512


@pytest.mark.parametrize(
    "adapter, message",
    [
        ("no/such/adapter", r"model.adapter 'no/such/adapter': no such directory; set model.adapter"),
        ("{tmp}", r"not a PEFT adapter directory \(no adapter_config.json in it\)"),
    ],
)
def test_a_missing_adapter_is_refused(tiny_model, tmp_path, adapter, message):
    cfg = config(tiny_model, tmp_path, model={"path": str(tiny_model), "adapter": adapter.format(tmp=tmp_path)})
    with pytest.raises(ConfigError, match=message):
        preflight_run(cfg)


def test_an_adapter_directory_passes(tiny_model, tmp_path):
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    # With an adapter the LoRA settings are the adapter's: target_modules is not read.
    over = {"path": str(tiny_model), "adapter": str(tmp_path / "adapter"), "lora": {"target_modules": ["nope"]}}
    check_model_fits(config(tiny_model, tmp_path, model=over))


def test_target_modules_the_model_does_not_have_are_refused_naming_those_it_has(tiny_model, tmp_path):
    cfg = config(tiny_model, tmp_path, model={"path": str(tiny_model), "lora": {"target_modules": ["q_proj", "qkv"]}})
    with pytest.raises(ConfigError) as info:
        preflight_run(cfg)
    assert str(info.value) == (
        "model.lora.target_modules: the model (llama) has no layer LoRA can adapt named 'qkv'; set "
        "model.lora.target_modules to some of: down_proj, embed_tokens, gate_proj, k_proj, lm_head, o_proj, "
        "q_proj, up_proj, v_proj"
    )


def test_a_target_that_is_not_a_layer_lora_adapts_is_refused(tiny_model, tmp_path):
    # `mlp` and `layers.0` are modules of the model, but not layers LoRA can wrap.
    cfg = config(tiny_model, tmp_path, model={"path": str(tiny_model), "lora": {"target_modules": ["mlp"]}})
    with pytest.raises(ConfigError, match="no layer LoRA can adapt named 'mlp'"):
        check_model_fits(cfg)


def test_adaptable_modules_match_by_full_name_or_its_end(tiny_model, tmp_path):
    from transformers import AutoConfig

    names = adaptable_modules(AutoConfig.from_pretrained(tiny_model))
    assert "model.layers.1.self_attn.q_proj" in names and "model.layers.0.mlp" not in names
    cfg = config(
        tiny_model,
        tmp_path,
        model={"path": str(tiny_model), "lora": {"target_modules": ["self_attn.q_proj", "model.layers.1.mlp.up_proj"]}},
    )
    check_model_fits(cfg)


@pytest.mark.parametrize("tokens", [512, 100_000])
def test_max_new_tokens_beyond_the_context_is_refused(tiny_model, tmp_path, tokens):
    cfg = config(tiny_model, tmp_path, sampler={"max_new_tokens": tokens})
    with pytest.raises(
        ConfigError, match=rf"sampler.max_new_tokens \({tokens}\) does not fit the model's context of 512"
    ):
        preflight_run(cfg)


def test_a_prompt_longer_than_the_context_is_refused_naming_it(tiny_model, tmp_path):
    cfg = config(tiny_model, tmp_path)
    with pytest.raises(
        ConfigError,
        match=r"prompt 'long' of data.path '.*p.jsonl' is 60\d tokens with its chat template, longer than .* 512",
    ):
        check_model_fits(cfg, [prompt(3), prompt(600)])


def test_a_prompt_that_leaves_too_little_room_says_what_to_set(tiny_model, tmp_path):
    cfg = config(tiny_model, tmp_path, sampler={"max_new_tokens": 200})
    with pytest.raises(ConfigError) as info:
        check_model_fits(cfg, [prompt(400, id="p7")])
    text = str(info.value)
    assert (
        text.startswith("prompt 'p7' of data.path")
        and " is 40" in text
        and "set sampler.max_new_tokens to at most 10" in text
    )
