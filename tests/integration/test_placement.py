"""Tensor-parallel sampler placement on a local Ray that declares two (logical) GPUs: each
engine gets a placement group of one GPU bundle per shard on one node, and an actor placed
in it sees that group as its own, which is how vLLM's Ray executor finds the bundles for its
GPU workers. No GPU or vLLM is needed; the engine on real GPUs is not tested here.

Also: a run whose actors the cluster cannot hold stops after ray.placement_timeout_s with a
message naming what was asked and what is there (exit 2), rather than waiting for good."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

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


def run_config(**over):
    from tests.conftest import tiny_config

    raw = tiny_config(Path("model"), Path("p.jsonl"), Path("run"), **{"judging": {"actors": 1}, **over})
    return validate_config({**raw, "ray": {"num_cpus": 2, "placement_timeout_s": 1}})


@pytest.fixture
def ray_with_one_special_node():
    """A local Ray of 2 CPUs offering one unit of the custom resource `special`."""
    import ray

    from alignloop.loop.roles.ray_runtime import local_only

    local_only()
    ray.init(num_cpus=2, resources={"special": 1}, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


@pytest.mark.parametrize(
    "over, expected",
    [
        (
            {"sampler": {"replicas": 2, "resources": {"special": 1}}},
            [
                "they ask for 2 sampler(s) {CPU: 0.5, special: 1}, 1 learner(s) {CPU: 0.5}; in all {CPU: 1.5, special: 2}",
                "the cluster has {CPU: 2, special: 1} on 1 node(s)",
            ],
        ),
        (
            {"learner": {"num_cpus": 3}},
            ["in all {CPU: 3.5}", "the cluster has {CPU: 2} on 1 node(s), and no node can hold one learner {CPU: 3}"],
        ),
        ({"judging": {"actors": 1, "resources": {"gpu_node": 1}}}, ["no node can hold one judge {gpu_node: 1}"]),
    ],
)
def test_actors_the_cluster_cannot_hold_end_in_a_message_not_a_wait(ray_with_one_special_node, over, expected):
    """Each of these would leave an actor pending for good; the reservation made for them all is
    never placed, and after ray.placement_timeout_s (1 s here) the run stops saying why."""
    from alignloop.loop.roles.ray_runtime import PlacementTimeout, wait_for_placement

    with pytest.raises(PlacementTimeout) as e:
        wait_for_placement(run_config(**over))
    message = str(e.value)
    assert message.startswith("the cluster cannot hold the run's actors (waited 1 s, ray.placement_timeout_s)")
    for text in expected:
        assert text in message, message
    assert_no_group_left(ray_with_one_special_node)


def test_actors_that_fit_are_reserved_then_released(ray_with_one_special_node):
    from alignloop.loop.roles.ray_runtime import wait_for_placement

    wait_for_placement(run_config(sampler={"replicas": 1, "resources": {"special": 1}}))
    assert_no_group_left(ray_with_one_special_node)


def assert_no_group_left(ray) -> None:
    """The reservation is removed, placed or not: the actors get its resources."""
    states = [g["state"] for g in ray.util.placement_group_table().values()]
    assert states and all(s == "REMOVED" for s in states), states


def test_a_run_that_cannot_be_placed_exits_2(tmp_path, tiny_model):
    from tests.conftest import tiny_config, write_prompts
    from tests.helpers import refused, run_cli

    raw = tiny_config(tiny_model, write_prompts(tmp_path / "p.jsonl"), tmp_path / "run")
    raw["ray"] = {"num_cpus": 2, "placement_timeout_s": 1}
    raw["sampler"]["replicas"] = 2
    raw["sampler"]["resources"] = {"special": 1}  # offered by no node of this local instance
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    out = run_cli("run", str(tmp_path / "c.yaml"), timeout=300)
    refused(out, "the cluster cannot hold the run's actors", "2 sampler(s) {CPU: 0.5, special: 1}")
