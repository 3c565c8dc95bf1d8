"""alignloop against TRL's GRPOTrainer on the same workload, side by side on this machine.

    python scripts/bench_vs_trl.py                     # fp32, 3 rounds of (TRL, alignloop)
    python scripts/bench_vs_trl.py --precision bf16 --rounds 2

The workload, the same for both: the embedded SmolLM2-135M-Instruct, a LoRA (r 8, alpha 16,
dropout 0.05, the project's default target modules), GRPO (sequence-mean loss, no KL term,
one optimizer step per iteration over 8 prompts x 4 samples in micro-batches of 8), every
response exactly 48 tokens (min_new_tokens = max_new_tokens = 48, so both generate and train on
the same number of tokens), temperature 1, no top-k/top-p, the same string reward, 3 steps.
alignloop runs in-process, as one learner and one HF sampler (the sequential schedule's
phases: publish the adapter, sample, judge, learn), with no Ray in the way, twice: with its
defaults, and fast (`sampler.decoder: alignloop`, its own decoding loop, and
`learner.prefix_sharing: true`, one prompt pass per group); TRL runs GRPOTrainer.train(). Each
run is a fresh process, the three alternate, so drift in the machine's load falls on all.

TRL is never installed into the project's venv: it lives in a venv of its own (.venv-bench,
git-ignored), created on first use with the CPU torch the project uses, then trl and peft.

Per step: TRL's generation (its _generate_and_score_completions: sampling, reward, advantages)
and the rest of its step (the forward, backward and optimizer step); alignloop's sample, learn
and publish phases. Times are means over steps 2..N (step 1 warms up). Ratios are alignloop / TRL
(below 1: alignloop is faster). alignloop's sampling is also set against a raw model.generate
of the same batch on the same merged weights (above 0.9: the sampler adds little to generate).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH_VENV = ROOT / ".venv-bench"
TORCH = "torch==2.13.0"  # the project's CPU build; installed first so trl does not pull a CUDA one

PROMPTS = [
    "Name three fruits.",
    "What is the capital of France?",
    "Write a haiku about rain.",
    "Explain what a verb is.",
    "Give me a tip for sleeping better.",
    "What is 12 times 7?",
    "Describe the color blue to someone.",
    "Why is the sky blue?",
]
SAMPLES, TOKENS, MICRO, LR, SEED = 4, 48, 8, 1e-5, 0
WORKERS = ("trl", "alignloop", "alignloop-fast")
LORA = {"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": ["gate_proj", "up_proj", "down_proj"]}


def reward(text: str) -> float:
    """The same made-up reward on both sides: the share of the letter e (it only has to vary)."""
    return text.count("e") / max(1, len(text))


# workers -------------------------------------------------------------------------------------
def trl_worker(model_dir: str, steps: int, precision: str) -> dict:
    """GRPOTrainer on the workload; runs in the bench venv (no alignloop import)."""
    import tempfile

    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    torch.set_num_threads(os.cpu_count() or 1)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": p}]} for p in PROMPTS * steps])

    def reward_fn(completions, **_):
        return [reward(c[-1]["content"] if isinstance(c, list) else c) for c in completions]

    args = GRPOConfig(
        output_dir=tempfile.mkdtemp(),
        per_device_train_batch_size=MICRO,
        gradient_accumulation_steps=len(PROMPTS) * SAMPLES // MICRO,
        num_generations=SAMPLES,
        max_completion_length=TOKENS,
        generation_kwargs={"min_new_tokens": TOKENS},
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        learning_rate=LR,
        lr_scheduler_type="constant",
        beta=0.0,
        loss_type="grpo",
        num_iterations=1,
        # TRL's default recomputes activations in the backward pass (a memory saving a 135M
        # model does not need); off, TRL runs at its fastest, and alignloop does not recompute.
        gradient_checkpointing=False,
        max_steps=steps,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=SEED,
        use_cpu=True,
        bf16=precision == "bf16",
        shuffle_dataset=False,
    )
    lora = LoraConfig(
        r=LORA["r"],
        lora_alpha=LORA["alpha"],
        lora_dropout=LORA["dropout"],
        target_modules=LORA["target_modules"],
        task_type="CAUSAL_LM",
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=reward_fn,
        args=args,
        train_dataset=data,
        processing_class=tokenizer,
        peft_config=lora,
    )
    gen_times: list[float] = []
    inner = trainer._generate_and_score_completions

    def timed(*a, **kw):
        t0 = time.perf_counter()
        out = inner(*a, **kw)
        gen_times.append(time.perf_counter() - t0)
        return out

    trainer._generate_and_score_completions = timed  # type: ignore[method-assign]
    step_times: list[float] = []

    class Clock(TrainerCallback):
        t = 0.0

        def on_step_begin(self, *a, **kw):
            if not Clock.t:
                Clock.t = time.perf_counter()

        def on_step_end(self, *a, **kw):
            now = time.perf_counter()
            step_times.append(now - Clock.t)
            Clock.t = now

    trainer.add_callback(Clock())
    trainer.train()
    import transformers
    import trl

    return {
        "step": step_times,
        "sample": gen_times,
        "tokens": len(PROMPTS) * SAMPLES * TOKENS,
        "versions": f"trl {trl.__version__}, transformers {transformers.__version__}, torch {torch.__version__}",
    }


def alignloop_worker(steps: int, precision: str, fast: bool) -> dict:
    """One learner and one HF sampler in this process, the sequential schedule's phases."""
    sys.path.insert(0, str(ROOT))
    from alignloop.loop.config import validate_config
    from alignloop.policies.learner import Learner
    from alignloop.policies.objectives.base import Example
    from alignloop.policies.samplers.hf import HFSampler
    from alignloop.records import Judgment, Message, Prompt

    cfg = validate_config(
        {
            "name": "bench-vs-trl",
            "data": {"path": "unused"},
            "model": {"lora": LORA},
            "sampler": {
                "samples_per_prompt": SAMPLES,
                "max_new_tokens": TOKENS,
                "min_new_tokens": TOKENS,  # every response 48 tokens, as TRL's
                "decoder": "alignloop" if fast else "transformers",
                "batch_size": len(PROMPTS),
                "top_p": 1.0,
                "dtype": "bfloat16" if precision == "bf16" else None,
            },
            "judge": {"type": "rules", "checks": [{"type": "finished"}]},
            "learner": {
                "objective": {"type": "grpo"},
                "lr": LR,
                "schedule": "constant",
                "minibatch_size": len(PROMPTS) * SAMPLES,
                "micro_batch_size": MICRO,
                "precision": precision,
                "prefix_sharing": fast,
            },
        }
    )
    learner = Learner(cfg.model, cfg.learner, cfg.sampler.temperature, SEED)
    sampler = HFSampler(cfg.model, cfg.sampler)
    prompts = [Prompt(id=f"p{i}", messages=[Message(role="user", content=p)]) for i, p in enumerate(PROMPTS)]
    times: dict[str, list[float]] = {"publish": [], "sample": [], "judge": [], "learn": [], "step": []}
    for step in range(1, steps + 1):
        t0 = time.perf_counter()
        sampler.load_adapter(learner.export())
        t1 = time.perf_counter()
        samples = sampler.generate(prompts, step, seed=SEED * 1000 + step)
        t2 = time.perf_counter()
        by_id = {p.id: p for p in prompts}
        rows = [
            Example(by_id[s.prompt_id], s, Judgment(sample_id=s.id, score=reward(s.response), judge="bench"))
            for s in samples
        ]
        t3 = time.perf_counter()
        learner.learn(rows, step)
        t4 = time.perf_counter()
        for k, v in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0)):
            times[k].append(v)
    assert all(len(s.token_ids or ()) == TOKENS for s in samples), "every response is 48 tokens"
    times["raw_generate"] = [raw_generate(sampler, prompts) for _ in range(2)]
    return times | {"tokens": len(PROMPTS) * SAMPLES * TOKENS}


def raw_generate(sampler, prompts) -> float:
    """model.generate on the sampler's own (merged) weights, the same batch and settings, with
    nothing around it: what the sampler's generate costs beyond the library's."""
    import torch

    from alignloop.policies.model import left_pad, render_prompt

    ids = [render_prompt(sampler.tokenizer, p.messages) for p in prompts]
    pad = sampler.tokenizer.pad_token_id
    input_ids, attention = left_pad(ids, pad)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    with torch.no_grad():
        sampler.model.generate(
            input_ids=input_ids,
            attention_mask=attention,
            do_sample=True,
            temperature=1.0,
            top_p=1.0,
            top_k=0,
            max_new_tokens=TOKENS,
            min_new_tokens=TOKENS,
            num_return_sequences=SAMPLES,
            pad_token_id=pad,
        )
    return time.perf_counter() - t0


# driver --------------------------------------------------------------------------------------
def ensure_bench_venv() -> Path:
    """The bench venv's python, created with TRL on first use (the project's venv is untouched)."""
    python = BENCH_VENV / "bin" / "python"
    probe = [str(python), "-c", "import trl, peft, torch; print(torch.__version__)"]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return python
    print(f"creating {BENCH_VENV} with {TORCH}, then trl and peft (once)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(BENCH_VENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", TORCH], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "trl", "peft"], check=True)
    subprocess.run(probe, check=True)
    return python


def run_worker(python: str, which: str, args, model_dir: str) -> dict:
    cmd = [python, __file__, "--worker", which, "--steps", str(args.steps), "--precision", args.precision]
    cmd += ["--model-dir", model_dir]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    if out.returncode != 0:
        sys.exit(f"{which} run failed (exit {out.returncode}):\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def after_warmup(xs: list[float]) -> float:
    return statistics.mean(xs[1:] or xs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3, help="alternating (TRL, alignloop) pairs of runs")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--report", metavar="LOG", help="print the table from an earlier run's output and exit")
    ap.add_argument("--worker", choices=WORKERS, help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker == "trl":
        print(json.dumps(trl_worker(args.model_dir, args.steps, args.precision)))
        return
    if args.worker in ("alignloop", "alignloop-fast"):
        print(json.dumps(alignloop_worker(args.steps, args.precision, fast=args.worker == "alignloop-fast")))
        return
    if args.report:
        report_from(args.report, args)
        return
    sys.path.insert(0, str(ROOT))
    from alignloop.policies.model import resolve_model_path

    model_dir = resolve_model_path("smollm2-135m-instruct")
    bench_python = str(ensure_bench_venv())
    runs: dict[str, list[dict]] = {which: [] for which in WORKERS}
    for r in range(args.rounds):
        for which in WORKERS:
            python = bench_python if which == "trl" else sys.executable
            t0 = time.perf_counter()
            runs[which].append(run_worker(python, which, args, model_dir))
            # each run's times as they come, so a bench cut short still has them (--report)
            print(f"round {r + 1}: {which} done in {time.perf_counter() - t0:.0f} s", flush=True)
            print("RUN " + json.dumps({"which": which, **runs[which][-1]}), flush=True)
    report(runs, args)


def report_from(log: str, args) -> None:
    """The table from the RUN lines of an earlier bench's output."""
    runs: dict[str, list[dict]] = {which: [] for which in WORKERS}
    for line in Path(log).read_text().splitlines():
        if line.startswith("RUN "):
            run = json.loads(line[4:])
            runs[run.pop("which")].append(run)
    args.rounds = min(len(v) for v in runs.values())
    report(runs, args)


def report(runs: dict[str, list[dict]], args) -> None:
    def phase(which: str, key: str) -> float:
        return statistics.median(after_warmup(run[key]) for run in runs[which])

    trl = {"step": phase("trl", "step"), "sample": phase("trl", "sample")}
    trl["learn"] = trl["step"] - trl["sample"]
    ours = {w: {k: phase(w, k) for k in ("publish", "sample", "judge", "learn", "step")} for w in WORKERS[1:]}
    print(f"\n{runs['trl'][0]['versions']}; precision {args.precision}; {os.cpu_count()} cores")
    print(f"{len(PROMPTS)} prompts x {SAMPLES} samples x {TOKENS} tokens, {args.steps} steps, {args.rounds} rounds")
    print("median over rounds of each run's mean over steps 2..N, seconds per step\n")
    print("| phase | TRL GRPOTrainer | alignloop | / TRL | alignloop fast | / TRL |")
    print("|---|---|---|---|---|---|")
    for name, key in (("step (iteration)", "step"), ("sampling", "sample"), ("learn", "learn")):
        a, b, c = trl[key], ours["alignloop"][key], ours["alignloop-fast"][key]
        print(f"| {name} | {a:.2f} | {b:.2f} | {b / a:.2f} | {c:.2f} | {c / a:.2f} |")
    for name, key in (("publish (adapter to sampler)", "publish"), ("judge (the reward)", "judge")):
        print(f"| {name} | - | {ours['alignloop'][key]:.2f} | | {ours['alignloop-fast'][key]:.2f} | |")
    for w in WORKERS[1:]:
        raw = statistics.median(min(run["raw_generate"]) for run in runs[w])
        print(
            f"\n{w}: raw model.generate of the same batch {raw:.2f} s; sampling speed / raw: {raw / ours[w]['sample']:.2f}"
        )


if __name__ == "__main__":
    main()
