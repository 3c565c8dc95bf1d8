"""Learner ranks: two processes over gloo train the adapter one learner trains, on the same rows
and seed, for SFT, CUT and GRPO (the sequence and the token average): the same loss at every
optimizer step and the same adapter, within float32 summation-order error."""

from __future__ import annotations

import io
import re

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load as load_safetensors

from alignloop.loop.config import validate_config
from alignloop.policies.objectives.base import Example
from alignloop.records import Judgment, Message, Prompt, Sample
from tests.integration.test_cluster import cluster  # noqa: F401 - the two-node cluster fixture

pytestmark = pytest.mark.integration

# Responses of very different lengths, so that splitting a micro-batch by tokens matters and
# the token average differs from the sequence average.
TEXTS = [
    "yes the sun",
    "no",
    "the big red dog ran on the mat",
    "a cat",
    "the small blue tree was on the moon and the sun",
    "red",
    "the cat sat on the mat",
    "a dog is a dog",
]

OBJECTIVES = {
    "sft": {"type": "sft", "min_score": 0.5},
    "cut": {"type": "cut", "downsample": None},
    "grpo": {"type": "grpo"},
    "grpo-token": {"type": "grpo", "average": "token"},
}

# float32 sums taken in another order: observed gaps are around 1e-7 (loss) and 1e-6 (weights)
LOSS_TOL, WEIGHT_TOL = 1e-5, 1e-5


def config(model_path: str, objective: dict, **learner):
    return validate_config(
        {
            "name": "t",
            "data": {"path": "x"},
            "model": {
                "path": model_path,
                "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
            },
            "judge": {"type": "rules", "checks": [{"type": "finished"}]},
            "learner": {
                "lr": 1e-2,
                "epochs": 3,
                "minibatch_size": 4,
                "micro_batch_size": 4,
                "threads": 1,
                "objective": objective,
                **learner,
            },
        }
    )


def rows(tokenizer, version: int) -> list[Example]:
    """Two prompts x four responses, sampled by adapter `version`: scores for SFT and GRPO,
    verdicts and critiques for CUT."""
    out = []
    for i, text in enumerate(TEXTS):
        prompt = Prompt(id=f"p{i // 4}", messages=[Message(role="user", content=["the cat sat", "a dog ran"][i // 4])])
        ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        sample = Sample(id=f"s{i}", prompt_id=prompt.id, response=text, policy_version=version, token_ids=ids)
        negative = i % 3 == 0
        judgment = Judgment(
            sample_id=sample.id,
            score=(i * 7 % 5) / 4,
            verdict="negative" if negative else "positive",
            critique="the dog is not a cat" if negative else None,
            judge="t",
        )
        out.append(Example(prompt, sample, judgment))
    return out


def train(learner, iterations: range = range(2)) -> tuple[list[float], dict[str, torch.Tensor] | None]:
    """Loss of every optimizer step over `iterations`, and the adapter's weights (None on a
    sharded rank other than 0, which takes part in gathering them)."""
    losses: list[float] = []
    step = learner._step

    def logged(*args):
        metrics = step(*args)
        losses.append(metrics["loss"])
        return metrics

    learner._step = logged
    for it in iterations:
        learner.learn(rows(learner.tokenizer, learner.version), it)
    payload = learner.export()
    return losses, load_safetensors(payload.weights) if payload is not None else None


def rank_main(
    rank: int, world: int, address: str, model_path: str, objective: dict, out: str, options: dict, start: str | None
) -> None:
    """One rank: trains iterations 0 and 1, or, given a checkpoint `start` (a single learner's
    adapter and optimizer state after iteration 0), restores it and trains iteration 1."""
    from alignloop.policies.distributed import RankLearner

    cfg = config(model_path, objective, **options)
    learner = RankLearner(cfg.model, cfg.learner, 1.0, 0, rank=rank, world=world)
    learner.join(address)
    if start is not None:
        checkpoint = torch.load(start, weights_only=False)
        learner.restore(checkpoint["payload"], checkpoint["state"])
    losses, weights = train(learner, range(1 if start else 0, 2))
    state = learner.state_bytes()  # sharded: gathered from every rank
    if rank == 0:
        torch.save({"losses": losses, "weights": weights, "state": state}, out)
    learner.leave()


def run_ranks(world: int, model_path: str, objective: dict, out: str, start: str | None = None, **options) -> dict:
    from alignloop.policies.distributed import free_port

    address = f"127.0.0.1:{free_port()}"
    options = {"ranks": world, **options}
    mp.spawn(rank_main, args=(world, address, model_path, objective, out, options, start), nprocs=world)
    return torch.load(out, weights_only=True)


CASES = [(name, False) for name in OBJECTIVES] + [(name, True) for name in ("sft", "cut", "grpo-token")]


@pytest.mark.parametrize("name, shard_base", CASES, ids=[f"{n}{'-fsdp2' if s else ''}" for n, s in CASES])
def test_two_ranks_train_the_adapter_one_learner_trains(name, shard_base, tiny_model, tmp_path):
    """shard_base: the base, the adapter and its optimizer state sharded by FSDP2 over gloo."""
    from alignloop.policies.learner import Learner

    cfg = config(str(tiny_model), OBJECTIVES[name])
    torch.set_num_threads(1)
    one = Learner(cfg.model, cfg.learner, 1.0, 0)
    one_losses, one_weights = train(one)
    assert one_weights is not None
    two = run_ranks(2, str(tiny_model), OBJECTIVES[name], str(tmp_path / "two.pt"), shard_base=shard_base)
    assert len(two["losses"]) == len(one_losses) >= 6  # 3 epochs of at least one step, 2 iterations
    assert two["losses"] == pytest.approx(one_losses, abs=LOSS_TOL)
    assert sorted(two["weights"]) == sorted(one_weights)
    initial = load_safetensors_initial(cfg)
    moved = max((w - initial[k]).abs().max().item() for k, w in one_weights.items())
    assert moved > 100 * WEIGHT_TOL, "training moved the adapter well beyond the tolerance"
    for key, w in one_weights.items():
        assert torch.allclose(two["weights"][key], w, atol=WEIGHT_TOL, rtol=0), key
    saved = torch.load(io.BytesIO(two["state"]), weights_only=True)
    assert saved["version"] == 2, "rank 0 saves the optimizer state the ranks share (sharded: gathered whole)"
    mine = one.optimizer.state_dict()
    assert saved["optimizer"]["state"].keys() == mine["state"].keys()
    for i, state in mine["state"].items():  # numbered alike, the same moments
        assert torch.allclose(saved["optimizer"]["state"][i]["exp_avg"], state["exp_avg"], atol=WEIGHT_TOL, rtol=0)


def test_sharded_ranks_resume_from_a_single_learners_checkpoint(tiny_model, tmp_path):
    """A checkpoint is the single learner's format whoever wrote it: two FSDP2 ranks restore
    one learner's adapter and optimizer state after iteration 0 and train iteration 1 as it does."""
    from alignloop.policies.learner import Learner

    cfg = config(str(tiny_model), OBJECTIVES["sft"])
    torch.set_num_threads(1)
    one = Learner(cfg.model, cfg.learner, 1.0, 0)
    train(one, range(1))
    torch.save({"payload": one.export(), "state": one.state_bytes()}, tmp_path / "start.pt")
    one_losses, one_weights = train(one, range(1, 2))
    assert one_weights is not None
    two = run_ranks(
        2, str(tiny_model), OBJECTIVES["sft"], str(tmp_path / "two.pt"), str(tmp_path / "start.pt"), shard_base=True
    )
    assert two["losses"] == pytest.approx(one_losses, abs=LOSS_TOL)
    for key, w in one_weights.items():
        assert torch.allclose(two["weights"][key], w, atol=WEIGHT_TOL, rtol=0), key


def load_safetensors_initial(cfg) -> dict[str, torch.Tensor]:
    """The adapter before training (the seed's LoRA initialisation)."""
    from alignloop.policies.learner import Learner

    return load_safetensors(Learner(cfg.model, cfg.learner, 1.0, 0).export().weights)


# As tests/integration/test_actor_death.py: long responses and 30 epochs on each prompt's best
# response, so that the ranks are inside learn() long enough to be caught there.
RAY_SETTINGS = dict(
    iterations=3,
    sampler={"samples_per_prompt": 3, "max_new_tokens": 64, "batch_size": 1, "num_cpus": 0.5, "threads": 1},
    learner={
        "objective": {"type": "sft", "best_of_n": True},
        "epochs": 30,
        "lr": 5e-3,
        "minibatch_size": 4,
        "micro_batch_size": 2,
        "num_cpus": 0.5,
        "threads": 1,
        "ranks": 2,
    },
)


def test_two_ranks_on_ray_a_rank_killed_mid_learn_exits_7_and_resume_ends_as_an_uninterrupted_run(tmp_path, tiny_model):
    import json

    from tests.helpers import alignloop, artifacts, assert_same, finish, state_of, write_config
    from tests.integration.test_actor_death import kill_when

    finish(alignloop("run", str(write_config(tmp_path, tiny_model, "full", **RAY_SETTINGS))))
    placed = [json.loads(line) for line in (tmp_path / "full" / "placement.jsonl").read_text().splitlines()]
    assert len(placed[-1]["learner"]) == 2, "two learner actors, each one rank"
    reference = artifacts(tmp_path / "full")

    config = write_config(tmp_path, tiny_model, "killed", **RAY_SETTINGS)
    proc = alignloop("run", str(config))
    state = kill_when(proc, tmp_path / "killed", [(2, "judge"), (3, "judge")], "ray::RankLearner.learn")
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 7, out
    assert re.search(r"learner rank [01] of 2 died during learn\(\)", out) and "--resume" in out, out
    assert "Traceback" not in out
    assert state_of(tmp_path / "killed") == state, "everything finished before the kill is kept"
    finish(alignloop("run", str(config), "--resume"))
    assert_same(reference, artifacts(tmp_path / "killed"))


def test_one_rank_on_each_node_of_a_two_node_cluster(tiny_model, tmp_path, cluster):  # noqa: F811
    """learner.placement: spread on scripts/local_cluster.sh's two nodes: a rank on each, the
    gradients summed across them, and the run completes as on one node."""
    import json
    import subprocess
    import sys

    from tests.conftest import write_prompts
    from tests.integration.test_cluster import ROOT, node_resources, overrides

    _, env = cluster
    prompts = write_prompts(tmp_path / "p.jsonl", n=8)
    spread = ["learner.ranks=2", "learner.placement=spread", "learner.resources={}", "learner.num_cpus=0.25"]
    spread += ["sampler.num_cpus=0.5"]  # room on the sampler's node for a rank
    out = subprocess.run(
        [sys.executable, "-m", "alignloop.loop.cli", "run", "configs/cluster-cpu.yaml"]
        + overrides(tiny_model, prompts, tmp_path / "run")
        + [arg for s in spread for arg in ("--set", s)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert (state["iteration"], state["step"], state["adapter_version"]) == (2, "learn", 2)
    (placement,) = [json.loads(line) for line in (tmp_path / "run" / "placement.jsonl").read_text().splitlines()]
    assert len(set(placement["learner"])) == 2, "the two ranks on two nodes"
    assert node_resources(placement, "learner") == {"node_a", "node_b"}


def test_two_fsdp2_ranks_on_ray_train_as_two_whole_ranks(tmp_path, tiny_model):
    """learner.shard_base through `alignloop run`: the first iteration (the same samples, from
    the untrained adapter) trains to the same loss as unsharded ranks, and the run completes."""
    import json

    from tests.helpers import alignloop, finish, write_config

    losses = {}
    for name, shard in (("whole", False), ("sharded", True)):
        settings = {**RAY_SETTINGS, "iterations": 2, "learner": {**RAY_SETTINGS["learner"], "shard_base": shard}}
        finish(alignloop("run", str(write_config(tmp_path, tiny_model, name, **settings))))
        losses[name] = json.loads((tmp_path / name / "iter-0001" / "metrics.json").read_text())["loss"]
        assert json.loads((tmp_path / name / "state.json").read_text())["adapter_version"] == 2
    assert losses["sharded"] == pytest.approx(losses["whole"], abs=LOSS_TOL)
