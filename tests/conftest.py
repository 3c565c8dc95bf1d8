"""Shared fixtures: a tiny random chat model built in code (nothing downloaded) and helpers
to write prompt files and configs around it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

WORDS = "the a cat dog sat ran on mat big small red blue is was and yes no sun moon tree".split()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from alignloop.policies.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"), WORDS, seed=0)


def write_prompts(path: Path, n: int = 6) -> Path:
    rows = [{"id": f"p{i}", "instruction": f"{WORDS[i % len(WORDS)]} cat sat on the mat"} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def tiny_config(model_dir: Path, prompts: Path, run_dir: Path, **over) -> dict:
    cfg = {
        "name": "tiny",
        "run_dir": str(run_dir),
        "seed": 0,
        "iterations": 2,
        "model": {
            "path": str(model_dir),
            "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj", "gate_proj"]},
        },
        "data": {"path": str(prompts), "prompts_per_iteration": 4},
        "sampler": {"samples_per_prompt": 3, "max_new_tokens": 6, "batch_size": 2, "num_cpus": 0.5, "threads": 1},
        "judge": {"type": "rules", "checks": [{"type": "max_words", "limit": 4}]},
        "judging": {"actors": 2, "chunk_size": 5},
        "learner": {"lr": 5e-3, "minibatch_size": 4, "micro_batch_size": 2, "num_cpus": 0.5, "threads": 1},
        "ray": {"num_cpus": 2},
    }
    for key, value in over.items():
        # A block with its own `type` (a judge, an objective) replaces the default; others merge.
        merge = isinstance(value, dict) and "type" not in value and key in cfg
        cfg[key] = {**cfg[key], **value} if merge else value
    return cfg
