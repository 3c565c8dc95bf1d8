"""Tensor-parallel sampler placement on a local Ray that declares two (logical) GPUs: each
engine gets a placement group of one GPU bundle per shard on one node, and an actor placed
in it sees that group as its own, which is how vLLM's Ray executor finds the bundles for its
GPU workers. No GPU or vLLM is needed; the engine on real GPUs is not tested here."""

from __future__ import annotations

import pytest

from alignloop.loop.config import validate_config
from alignloop.loop.roles.ray_runtime import ACTOR_ENV, sampler_placement

pytestmark = pytest.mark.integration


def sampler(**over):
    raw = {
        "name": "t",
        "data": {"path": "p.jsonl"},
        "judge": {"type": "rules", "checks": [{"type": "finished"}]},
        "sampler": {"backend": "vllm", "num_cpus": 0.5, **over},
    }
    return validate_config(raw).sampler


def test_single_device_engine_is_a_plain_actor():
    options, group = sampler_placement(sampler(num_gpus=1, resources={"sampler_node": 1}))
    assert group is None and options == {
        "num_cpus": 0.5,
        "num_gpus": 1,
        "max_restarts": 1,
        "resources": {"sampler_node": 1},
        "runtime_env": ACTOR_ENV,
    }


def test_tensor_parallel_engine_gets_a_packed_group_that_its_actor_sees():
    import ray
    from ray.util.placement_group import remove_placement_group

    from alignloop.loop.roles.ray_runtime import local_only

    local_only()
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        options, group = sampler_placement(sampler(num_gpus=1, vllm={"tensor_parallel_size": 2}))
        assert group.bundle_specs == [{"GPU": 1, "CPU": 0.5}, {"GPU": 1}]
        assert options["num_gpus"] == 0, "the GPUs belong to the engine's workers, one per bundle"
        strategy = options.pop("scheduling_strategy")
        assert strategy.placement_group_bundle_index == 0 and strategy.placement_group_capture_child_tasks

        @ray.remote
        class Probe:
            def group_id(self):
                return ray.util.get_current_placement_group().id

        probe = Probe.options(**options, scheduling_strategy=strategy).remote()
        assert ray.get(probe.group_id.remote()) == group.id
        assert ray.available_resources().get("GPU", 0) == 0, "both GPUs are held by the group"
        remove_placement_group(group)
    finally:
        ray.shutdown()
