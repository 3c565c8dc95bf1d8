"""CUT on a tiny language model where good samples are rare (docs/methods.md §1), run through
alignloop's own Learner (a LoRA adapter on the pretrained tiny model) and HFSampler: each
round samples from the newest adapter, judges with the rule judge, learns one iteration and
publishes the adapter to the sampler, as the online loop does (without Ray).

Every method gets the same base model, rounds, prompts, samples per round and learner
settings; only `learner.objective` changes. "CUT" is the paper's method (`detection: ratio`);
"CUT with judged spans" puts the unlikelihood on the tokens the rule judge's spans cover. The flawed rate is measured after every round on
a fixed evaluation draw (same prompts and sampling seed for every method and round).

Run through the suite: .venv/bin/python scripts/reproduce.py --only cut
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import repro_cut_task as task
import torch

from alignloop.loop.config import LearnerConfig, LoraOptions, ModelConfig, SamplerConfig
from alignloop.policies.learner import Learner
from alignloop.policies.model import load_tokenizer
from alignloop.policies.objectives.base import Example
from alignloop.policies.objectives.cut import inappropriate_tokens
from alignloop.policies.objectives.options import CUTOptions, HindsightOptions, SFTOptions
from alignloop.policies.samplers.hf import HFSampler

# lambda. Here a judgment also tells which words are *not* forbidden (all it does not name),
# so it raises a good word's probability too: by at most 1 / (1 - p) (a position known to be
# good; 1.82 at p = 0.45). A named word's first use rises from p / 16 (16 forbidden words) to
# at least 1 / 6 (it must come in one of at most 6 positions), a ratio of at least 16 / (6 p)
# (5.9 at p = 0.45). Detection separates the two only for lambda inside that window, which
# `window()` computes for every regime and the report states; lambda = 2 is inside it in every
# checked regime. The official 1.1 (set for real LLMs) is below it: it marks good words too.
THRESHOLD = 2.0
REPORTED = (1.1, 1.5, 2.0)  # lambdas whose detection quality the report shows (1.1: the official default)


@dataclass
class Settings:
    rounds: int = 3
    prompts: int = 32  # per round; each sampled k times -> prompts * k samples per round
    k: int = 8
    eval_prompts: int = 32  # x k = the evaluation draw
    pretrain_steps: int = 1200
    easy_steps: int = 300
    lr: float = 1e-3
    epochs: int = 1
    minibatch: int = 16
    lora_r: int = 8
    threshold: float = THRESHOLD
    # bf16: the learner under bfloat16 autocast (float32 LoRA weights) and the sampler's weights
    # in bfloat16, as `learner.precision: bf16` + `sampler.dtype: bfloat16` run the loop
    precision: str = "fp32"
    methods: tuple[str, ...] = (
        "CUT",
        "CUT with judged spans",
        "filtered SFT",
        "Hindsight",
        "CUT without token detection",
    )


def objective(name: str, s: Settings):
    return {
        "CUT": CUTOptions(threshold=s.threshold, detection="ratio"),
        "CUT with judged spans": CUTOptions(threshold=s.threshold, detection="spans"),
        "filtered SFT": SFTOptions(),
        "Hindsight": HindsightOptions(),
        "CUT without token detection": CUTOptions(threshold=s.threshold, token_detection=False),
    }[name]


def window(p: float, n_forbidden: int = len(task.FORBIDDEN), length: int = task.LENGTH) -> tuple[float, float]:
    """The lambdas that separate named words from good ones in a regime (see THRESHOLD)."""
    return 1 / (1 - p), n_forbidden / (length * p)


def configs(base: Path, options, s: Settings) -> tuple[ModelConfig, LearnerConfig, SamplerConfig]:
    model = ModelConfig(
        path=str(base),
        lora=LoraOptions(
            r=s.lora_r,
            alpha=2 * s.lora_r,
            dropout=0.0,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        ),
    )
    learner = LearnerConfig(
        objective=options,
        lr=s.lr,
        schedule="constant",
        epochs=s.epochs,
        minibatch_size=s.minibatch,
        micro_batch_size=s.minibatch,
        device="cpu",
        threads=1,
        precision=s.precision,
    )
    sampler = SamplerConfig(
        samples_per_prompt=s.k,
        max_new_tokens=task.LENGTH + 2,
        threads=1,
        dtype="bfloat16" if s.precision == "bf16" else None,
    )
    return model, learner, sampler


def evaluate(sampler: HFSampler, prompts, seed: int, rules) -> dict[str, float]:
    """On the evaluation draw (same prompts and sampling seed every time): the fraction the
    judge rejects (flawed), and the fraction that is not six answer words (malformed)."""
    samples = sampler.generate(prompts, iteration=0, seed=seed)
    by_id = {p.id: p for p in prompts}
    judgments = [rules.judge_one(by_id[x.prompt_id], x) for x in samples]
    return {
        "flawed": float(np.mean([j.verdict == "negative" for j in judgments])),
        "malformed": float(np.mean([task.MALFORMED in (j.critique or "") for j in judgments])),
    }


def run_method(name: str, base: Path, s: Settings, seed: int) -> dict:
    options = objective(name, s)
    model_cfg, learner_cfg, sampler_cfg = configs(base, options, s)
    learner = Learner(model_cfg, learner_cfg, temperature=1.0, seed=seed)
    rules = task.judge()
    rng = np.random.default_rng([seed, 11])
    eval_prompts = task.prompts("eval-", s.eval_prompts, np.random.default_rng([seed, 12]))
    eval_seed = 10_000 + seed
    out: dict = {"eval": [], "detection": {}}
    with tempfile.TemporaryDirectory(prefix="repro-sampler-") as tmp:
        sampler = HFSampler(model_cfg, sampler_cfg, workdir=tmp)
        out["eval"].append(evaluate(sampler, eval_prompts, eval_seed, rules))
        for i in range(1, s.rounds + 1):
            prompts = task.prompts(f"r{i}-", s.prompts, rng)
            samples = sampler.generate(prompts, iteration=i, seed=1000 * seed + i)
            by_id = {x.id: x for x in prompts}
            examples = [Example(by_id[x.prompt_id], x, rules.judge_one(by_id[x.prompt_id], x)) for x in samples]
            if i == 1 and name == "CUT":
                out["detection"] = detection(learner, examples, sorted({s.threshold, *REPORTED}))
            out.setdefault("rows", []).append(learner.learn(examples, iteration=i)["n_train"])
            sampler.load_adapter(learner.export())
            out["eval"].append(evaluate(sampler, eval_prompts, eval_seed, rules))
        sampler.close()
    out["flawed"] = [e["flawed"] for e in out["eval"]]
    return out


@torch.no_grad()
def detection(learner: Learner, examples: list[Example], thresholds: list[float]) -> dict:
    """Precision and recall of CUT's inappropriate-token mask (from `inappropriate_tokens`, on
    the learner's own batch of the first round's negatives, before any update) against the
    positions that really hold a forbidden word, for each lambda in `thresholds`, and for the
    mask the judge's spans give (key "spans": the rule judge's character spans mapped onto
    the sampled tokens by the learner, the path `detection: spans` trains on)."""
    forbidden = set(learner.tokenizer.convert_tokens_to_ids(task.FORBIDDEN))
    rows, _ = learner.objective.select(examples, np.random.default_rng(0))
    negatives = [e for e in rows if e.negative]
    modes = {lam: CUTOptions(threshold=lam, detection="ratio") for lam in thresholds}
    modes["spans"] = CUTOptions(detection="spans")
    counts = {m: np.zeros(3) for m in modes}  # true positives, detected, truly forbidden
    for start in range(0, len(negatives), 64):
        chunk = negatives[start : start + 64]
        batch = learner.batch(chunk)
        t = batch.mask.shape[1]
        truth = torch.tensor(
            [[0.0] * (t - len(ids)) + [float(x in forbidden) for x in ids] for ids in map(learner.response_ids, chunk)]
        )  # (B, T), right-aligned like the batch
        for m, c in counts.items():
            det = inappropriate_tokens(batch, modes[m])  # (B, T)
            c += [(det * truth).sum().item(), det.sum().item(), truth.sum().item()]
    return {m: {"precision": tp / max(d, 1), "recall": tp / max(f, 1)} for m, (tp, d, f) in counts.items()}


# the suite ------------------------------------------------------------------------------------

# per-word forbidden probability: 1 - (1 - p)^6 = 97% / 88% / 45% of answers flawed
HARD, MEDIUM, EASY = 0.45, 0.3, 0.095
SECOND = ("CUT", "CUT with judged spans", "filtered SFT")  # the methods run in the medium and easy regimes


def run(seeds: list[int], s: Settings, workdir: Path, log=print) -> tuple[str, list[tuple]]:
    """Pretrain the hard-regime base, derive the medium and easy ones from it, run every
    method on the hard one and CUT (both detections) / filtered SFT on the others, for every
    seed. Returns the markdown report and the checks as (name, value, op, threshold) tuples."""
    hard = task.build_base(workdir / "hard")
    loss = task.pretrain(hard, HARD, s.pretrain_steps, log=log)
    bases = {}
    for name, p in (("medium", MEDIUM), ("easy", EASY)):
        bases[name] = workdir / name
        shutil.copytree(hard, bases[name])
        # Each continues from the hard base (it already follows judgments); only the rate of
        # forbidden words has to move.
        task.pretrain(bases[name], p, s.easy_steps, log=log)
    res = {(m, seed): run_method(m, hard, s, seed) for m in s.methods for seed in seeds}
    medium = {(m, seed): run_method(m, bases["medium"], s, seed) for m in SECOND for seed in seeds}
    easy = {(m, seed): run_method(m, bases["easy"], s, seed) for m in SECOND for seed in seeds}
    text = "\n".join(
        [
            f"### CUT, hard regime: p = {HARD} per word, flawed rate after each round ({len(seeds)} seed(s): {seeds})",
            "",
            *rounds_table(res, s.methods, seeds),
            "",
            *detection_lines(res, seeds, s.threshold, HARD),
            "",
            f"### CUT, medium regime: p = {MEDIUM} per word",
            "",
            *rounds_table(medium, SECOND, seeds),
            "",
            *detection_lines(medium, seeds, s.threshold, MEDIUM),
            "",
            f"### Contrast (not a check): easy regime, p = {EASY} per word",
            "",
            *rounds_table(easy, SECOND, seeds),
            "",
            settings_line(s, loss, vocabulary=len(load_tokenizer(str(hard)))),
        ]
    )
    checked = checks(res, s.methods, seeds, s.threshold, HARD) + regime_checks(medium, seeds, s.threshold, MEDIUM)
    return text, checked


def rounds_table(res: dict, methods, seeds) -> list[str]:
    """Mean flawed rate over seeds per round (the worst seed in brackets), the final round's
    malformed share (a degenerate model's output is flawed but names no word), and how many
    rows the objective selected to train on each round (mean over seeds)."""
    n = len(res[methods[0], seeds[0]]["flawed"])
    lines = [
        "| method | base | "
        + " | ".join(f"round {i}" for i in range(1, n))
        + " | final malformed | rows trained per round |",
        "|---|" + "---|" * (n + 2),
    ]
    for m in methods:
        per_round = np.array([res[m, seed]["flawed"] for seed in seeds])  # (S, rounds + 1)
        cells = [f"{per_round[:, i].mean():.3f} ({per_round[:, i].max():.3f})" for i in range(n)]
        malformed = np.mean([res[m, seed]["eval"][-1]["malformed"] for seed in seeds])
        rows = np.mean([res[m, seed]["rows"] for seed in seeds], axis=0)  # (rounds,)
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {malformed:.3f} | {', '.join(f'{r:.0f}' for r in rows)} |")
    return lines


def detection_lines(res: dict, seeds, threshold: float, p_forbidden: float) -> list[str]:
    lo, hi = window(p_forbidden)
    lines = ["| CUT token detection, round 1 negatives | precision | recall |", "|---|---|---|"]
    for m in res["CUT", seeds[0]]["detection"]:
        p = [res["CUT", seed]["detection"][m]["precision"] for seed in seeds]
        r = [res["CUT", seed]["detection"][m]["recall"] for seed in seeds]
        if m == "spans":
            label = "the judge's spans, mapped onto the sampled tokens"
        else:
            label = f"lambda = {m:g}" + (" (used)" if m == threshold else " (official default)" if m == 1.1 else "")
        lines.append(f"| {label} | {np.mean(p):.3f} (min {min(p):.3f}) | {np.mean(r):.3f} (min {min(r):.3f}) |")
    lines += [
        "",
        f"The ratio separates named words from good ones for lambda in ({lo:.2f}, {hi:.2f}) in this "
        f"regime (1/(1-p) to 16/(6p)); lambda = {threshold:g} is {'inside' if lo < threshold < hi else 'OUTSIDE'} it.",
    ]
    return lines


def settings_line(s: Settings, loss: float, vocabulary: int) -> str:
    return (
        f"Settings: 2-layer model, hidden 64, vocabulary {vocabulary}; pretraining (full parameters, batch 32, "
        f"AdamW 3e-3 one-cycle, init std 0.12) {s.pretrain_steps} steps, final loss {loss:.3f}; medium and easy "
        f"bases: +{s.easy_steps} steps each from the hard one; "
        f"{s.rounds} round(s) x {s.prompts} prompts x k = {s.k} samples = {s.prompts * s.k} samples per round for "
        f"every method; evaluation {s.eval_prompts * s.k} responses; Learner: LoRA r = {s.lora_r} on every "
        f"linear layer, lr {s.lr:g} constant, {s.epochs} epoch(s), minibatch {s.minibatch}; lambda = {s.threshold}; precision {s.precision}."
    )


def detection_checks(res: dict, seeds, threshold: float, p_forbidden: float, label: str) -> list[tuple]:
    """Detection at lambda, only where lambda is inside the regime's window (outside it the
    finding does not claim separation), and the spans' detection, which holds everywhere."""
    det = [res["CUT", seed]["detection"] for seed in seeds]
    lo, hi = window(p_forbidden)
    out = [
        (
            f"{label}: judged spans' detection precision (worst seed)",
            min(d["spans"]["precision"] for d in det),
            ">=",
            0.99,
        ),
        (f"{label}: judged spans' detection recall (worst seed)", min(d["spans"]["recall"] for d in det), ">=", 0.99),
    ]
    if lo < threshold < hi:
        out += [
            (
                f"{label}: CUT detection precision at lambda = {threshold} (worst seed)",
                min(d[threshold]["precision"] for d in det),
                ">=",
                0.65,
            ),
            (
                f"{label}: CUT detection recall at lambda = {threshold} (worst seed)",
                min(d[threshold]["recall"] for d in det),
                ">=",
                0.85,
            ),
        ]
    return out


def regime_checks(res: dict, seeds, threshold: float, p_forbidden: float) -> list[tuple]:
    """A second regime where positives are rare: both CUTs beat filtered SFT there too."""
    final = {m: [res[m, seed]["flawed"][-1] for seed in seeds] for m in SECOND}
    label = f"p = {p_forbidden}"
    return [
        *(
            (
                f"{label}: {m} final flawed / filtered SFT final flawed (worst seed)",
                max(c / max(f, 1e-9) for c, f in zip(final[m], final["filtered SFT"])),
                "<=",
                0.8,
            )
            for m in ("CUT", "CUT with judged spans")
        ),
        *detection_checks(res, seeds, threshold, p_forbidden, label),
    ]


def checks(res: dict, methods, seeds, threshold: float, p_forbidden: float) -> list[tuple]:
    """Every check holds for every seed: ratios and rates on the worst seed, gaps on the
    smallest one."""
    final = {m: [res[m, seed]["flawed"][-1] for seed in seeds] for m in methods}
    base = [res["CUT", seed]["flawed"][0] for seed in seeds]
    steps = [a - b for seed in seeds for a, b in zip(res["CUT", seed]["flawed"], res["CUT", seed]["flawed"][1:])]
    return [
        (
            "CUT final flawed / filtered SFT final flawed (worst seed)",
            max(c / max(f, 1e-9) for c, f in zip(final["CUT"], final["filtered SFT"])),
            "<=",
            0.6,
        ),
        ("CUT final flawed rate (worst seed)", max(final["CUT"]), "<=", 0.40),
        ("CUT improves every round: smallest drop in flawed rate", min(steps), ">", 0.0),
        (
            "unlikelihood on every negative token - CUT, final flawed (smallest gap)",
            min(a - c for a, c in zip(final["CUT without token detection"], final["CUT"])),
            ">",
            0.0,
        ),
        (
            "CUT with judged spans final flawed / filtered SFT final flawed (worst seed)",
            max(c / max(f, 1e-9) for c, f in zip(final["CUT with judged spans"], final["filtered SFT"])),
            "<=",
            0.6,
        ),
        (
            "Hindsight final - base flawed rate (lowest)",
            min(h - b for h, b in zip(final["Hindsight"], base)),
            ">=",
            -0.05,
        ),
        *detection_checks(res, seeds, threshold, p_forbidden, f"p = {p_forbidden}"),
    ]
