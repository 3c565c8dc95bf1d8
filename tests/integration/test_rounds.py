"""Nightly rounds on a real local Ray instance with a tiny random model: a series of rounds
equals one run, reruns are idempotent, the gate keeps `current` when a round does harm, one
writer at a time, and a round killed with SIGKILL resumes to the same artifacts."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import yaml

from tests.conftest import WORDS, tiny_config
from tests.helpers import alignloop, artifacts, state_of, wait_for

pytestmark = pytest.mark.integration


def prompt_file(path: Path, prefix: str, n: int = 4) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [
        {"id": f"{prefix}{i}", "instruction": f"{WORDS[(len(prefix) * 7 + i) % len(WORDS)]} {prefix} cat sat"}
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def nightly(tmp_path: Path, tiny_model: Path, name: str, data: str, **over) -> Path:
    rnd = over.pop("round", {})
    over = {"iterations": 1, "data": {"path": data, "prompts_per_iteration": 4, "shuffle": False}, **over}
    cfg = tiny_config(tiny_model, Path(data), tmp_path / "unused", **over)
    cfg.pop("run_dir")
    cfg["round"] = {"series_dir": str(tmp_path / name), "max_prompts": 4, **rnd}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def round_(config: Path, round_id: str, *extra: str) -> tuple[int, str, dict | None]:
    proc = alignloop("round", str(config), "--round", round_id, "--json", *extra)
    out, _ = proc.communicate(timeout=600)
    lines = [line for line in out.splitlines() if line.startswith('{"series"')]
    return proc.returncode, out, json.loads(lines[-1]) if lines else None


def weights(adapter_dir: Path) -> bytes:
    return (adapter_dir / "adapter_model.safetensors").read_bytes()


def test_a_series_of_rounds_equals_one_run_and_reruns_change_nothing(tmp_path, tiny_model):
    for name in "abc":
        prompt_file(tmp_path / "prompts" / f"{name}.jsonl", name)
    glob = str(tmp_path / "prompts" / "*.jsonl")
    config = nightly(tmp_path, tiny_model, "series", glob)
    series = tmp_path / "series"
    for k, rid in enumerate(["r1", "r2", "r3"], start=1):
        code, out, summary = round_(config, rid)
        assert code == 0, out
        assert summary["status"] == "promoted" and summary["adapter_version"] == k and summary["n_prompts"] == 4
    ledger = [json.loads(line) for line in (series / "ledger.jsonl").read_text().splitlines()]
    assert [r["round"] for r in ledger] == ["r1"] * 4 + ["r2"] * 4 + ["r3"] * 4
    assert {r["id"][0] for r in ledger if r["round"] == "r2"} == {"b"}, "each round draws only new prompts"
    assert os.readlink(series / "current") == "rounds/r3/iter-0001/adapter"

    # A finished round reruns to its verdict and exit code without training again.
    before = weights(series / "current"), (series / "series.json").read_text()
    code, out, summary = round_(config, "r2")
    assert code == 0 and "already finished" in out and "iter 1/1" not in out, out
    assert (weights(series / "current"), (series / "series.json").read_text()) == before
    code, out, summary = round_(config, "r4")
    assert code == 5 and "no new prompts" in out and summary["code"] == 5, out

    # The same prompts as one run of three iterations: the same samples and the same adapter, bytes for bytes.
    single = tiny_config(
        tiny_model,
        Path(glob),
        tmp_path / "single",
        iterations=3,
        data={"path": glob, "prompts_per_iteration": 4, "shuffle": False},
    )
    (tmp_path / "single.yaml").write_text(yaml.safe_dump(single))
    proc = alignloop("run", str(tmp_path / "single.yaml"))
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    for k in (1, 2, 3):
        one = tmp_path / "single" / f"iter-{k:04d}"
        rnd = series / "rounds" / f"r{k}" / "iter-0001"
        assert (one / "samples.jsonl").read_text() == (rnd / "samples.jsonl").read_text(), (
            f"round {k} sampled differently"
        )
        assert weights(one / "adapter") == weights(rnd / "adapter"), f"round {k} trained differently"

    status = alignloop("status", str(series)).communicate(timeout=60)[0]
    assert "series of 3 round(s)" in status and "v3 of round r3" in status
    assert all(f"r{k}  promoted" in status for k in (1, 2, 3)), status


def test_the_gate_rejects_a_harmful_round_and_current_stays(tmp_path, tiny_model):
    """The eval judge asks for finished answers; the harmful round trains hard, by a
    miscalibrated judge, on the responses that ran to the token limit."""
    data = str(tmp_path / "prompts" / "{round}.jsonl")
    for rid in ("n1", "n2", "n3"):
        prompt_file(tmp_path / "prompts" / f"{rid}.jsonl", rid)
    prompt_file(tmp_path / "eval.jsonl", "e", n=4)
    gate = {
        "path": str(tmp_path / "eval.jsonl"),
        "samples_per_prompt": 6,
        "margin": 0.05,
        "judge": {"type": "rules", "checks": [{"type": "finished"}]},
    }
    # The tiny random model's logits barely move unless its output layer is adapted too.
    lora = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj", "gate_proj", "lm_head"]}
    config = nightly(
        tmp_path, tiny_model, "series", data, round={"eval": gate}, model={"lora": lora}, sampler={"max_new_tokens": 12}
    )
    series = tmp_path / "series"

    code, out, first = round_(config, "n1")
    assert code == 0 and first["status"] == "promoted", out
    promoted = os.readlink(series / "current"), weights(series / "current")

    harmful = [
        "--set",
        "judge={type: rules, checks: [{type: min_chars, limit: 30}]}",
        "--set",
        "learner.lr=0.1",
        "--set",
        "learner.epochs=20",
        "--set",
        "learner.schedule=constant",
    ]
    code, out, second = round_(config, "n2", *harmful)
    assert code == 4 and "not promoted" in out and second["status"] == "rejected", out
    assert second["eval_after"]["pass_rate"] < second["eval_before"]["pass_rate"] - 0.05
    assert (os.readlink(series / "current"), weights(series / "current")) == promoted, (
        "a rejected round must not move current"
    )
    assert second["eval_before"] == first["eval_after"], (
        "the promoted adapter's eval is the one computed after its round"
    )

    # The next round starts from the promoted adapter (v1), numbered after the rejected one.
    code, out, third = round_(config, "n3")
    assert code == 0 and third["adapter_version"] == 3, out
    entries = {r["id"]: r for r in json.loads((series / "series.json").read_text())["rounds"]}
    assert entries["n3"]["start_version"] == 1 and entries["n3"]["start_checksum"] == first["adapter_sha256"]
    assert third["eval_before"] == first["eval_after"]
    # base model, v1, v2 (rejected), v3: each adapter evaluated once, v1 reused by two rounds
    assert len(list((series / "eval-cache").iterdir())) == 4
    for name in ("eval-before", "eval-after"):
        assert len((series / "rounds" / "n2" / name / "judgments.jsonl").read_text().splitlines()) == 4 * 6


# The slow judge holds each judge step for about 8 s: long enough for a second invocation to
# meet the lock, and for the kill to land inside iteration 2.
SLOW = dict(
    iterations=2,
    judge={"type": "python", "target": "tests.judge_fakes:SlowRules", "options": {"delay_s": 4.0, "max_words": 4}},
)


def test_one_writer_and_a_killed_round_resumes_to_the_same_artifacts(tmp_path, tiny_model):
    data = str(prompt_file(tmp_path / "prompts.jsonl", "p", n=8))
    code, out, _ = round_(nightly(tmp_path, tiny_model, "whole", data, **SLOW), "r1")
    assert code == 0, out

    config = nightly(tmp_path, tiny_model, "killed", data, **SLOW)
    run_dir = tmp_path / "killed" / "rounds" / "r1"
    proc = alignloop("round", str(config), "--round", "r1")
    wait_for(lambda: state_of(run_dir) == (2, "sample"), proc)  # inside the slow judge step
    # Frozen there (its lock held, its pid alive), so the second process meets it however slow
    # the machine is, and the kill lands inside the round.
    os.killpg(proc.pid, signal.SIGSTOP)
    code, out, _ = round_(config, "r1")
    assert code == 6 and "in use by another alignloop process" in out and f"pid {proc.pid}" in out, out
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()

    code, out, summary = round_(config, "r1")
    assert code == 0 and summary["status"] == "promoted", out
    assert "iter 2/2" in out and "iter 1/2" not in out, "the rerun redid a finished iteration"
    a, b = artifacts(tmp_path / "whole" / "rounds" / "r1"), artifacts(run_dir)
    assert a["iters"] == b["iters"] and a["state"]["adapter_checksum"] == b["state"]["adapter_checksum"]
    assert weights(tmp_path / "whole" / "current") == weights(tmp_path / "killed" / "current")
