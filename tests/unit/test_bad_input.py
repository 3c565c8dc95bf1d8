"""Bad input caught before anything starts, in-process: secrets masked where a config is
printed, and a backend whose package is missing refused by the preflight. The CLI's side (exit
2, nothing written, damaged run directories) is tests/integration/test_bad_input.py."""

from __future__ import annotations

import importlib.machinery
import importlib.util

import pytest
import yaml

from alignloop.loop.config import ConfigError, redact, validate_config
from alignloop.loop.preflight import preflight_run
from tests.helpers import openai_judge

KEY = "sk-proj-Zx81kdQ0aLmPq77Rt5UvWx9Yz"


def test_credentials_and_secret_looking_values_are_masked_where_a_config_is_printed():
    cfg = validate_config(
        {
            "name": "t",
            "data": {"path": "p.jsonl"},
            "judge": openai_judge(
                base_url="https://alice:hunter2pass@llm.example.com/v1",
                extra_body={"headers": {"X-Auth": f"Bearer {KEY}"}, "note": f"key={KEY}", "safe": "keep me"},
            ),
        }
    )
    text = yaml.safe_dump(redact(cfg.model_dump(mode="json")))
    assert "hunter2pass" not in text and KEY not in text
    assert "https://alice:***@llm.example.com/v1" in text and "Bearer ***" in text and "keep me" in text


@pytest.mark.parametrize(
    "over, package, expected",
    [
        ({"sampler": {"backend": "vllm"}}, "vllm", "sampler.backend is 'vllm' but vLLM is not installed"),
        ({"ray": {"dashboard": True}}, "aiohttp_cors", "ray.dashboard: true needs Ray's dashboard packages"),
    ],
    ids=["vllm", "ray-dashboard"],
)
def test_a_backend_whose_package_is_missing_is_refused_and_one_that_is_there_is_not(
    tiny_model, monkeypatch, over, package, expected
):
    """Whether the package is installed here or not, both sides are checked: find_spec says
    "missing", then "present" (a bare spec: the preflight only asks, it imports nothing)."""
    cfg = validate_config(
        {
            "name": "t",
            "model": {"path": str(tiny_model)},
            "data": {"path": "p.jsonl"},
            "judge": {"type": "rules", "checks": [{"type": "finished"}]},
            "tracking": {"backends": []},
            **over,
        }
    )
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a, **k: None if name == package else real(name, *a, **k)
    )
    with pytest.raises(ConfigError, match=expected):
        preflight_run(cfg)
    present = {"vllm", "aiohttp", "aiohttp_cors", "opencensus"}
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a, **k: importlib.machinery.ModuleSpec(name, None) if name in present else real(name, *a, **k),
    )
    preflight_run(cfg)


def test_masking_keeps_alignloop_s_own_placeholders_and_masks_echoed_headers():
    from alignloop.records.secrets import mask_secrets

    advice = "run `export OPENAI_API_KEY=<your key>` and set api_key_env: OPENAI_API_KEY"
    assert mask_secrets(advice) == advice
    assert mask_secrets('{"Authorization": "abc123def"} x-api-key=zz9') == '{"Authorization": "***"} x-api-key=***'
