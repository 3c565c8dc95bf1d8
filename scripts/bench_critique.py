"""The local critique judge on the embedded model, free text against schema-constrained
decoding: how many replies become judgments, why the rest do not, and what a judgment costs.

    python scripts/bench_critique.py                  # 16 quickstart prompts, 2 responses each
    python scripts/bench_critique.py --prompts 8 --max-new-tokens 256

The responses are the embedded policy's own (sampled once, then judged by both modes), so the
judge sees what it would see in the quickstart run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from alignloop.judges import build_judge  # noqa: E402
from alignloop.judges.critique_model import CritiqueModelJudgeConfig, TransformersChatGenerator  # noqa: E402
from alignloop.policies.model import resolve_model_path  # noqa: E402
from alignloop.records import Message, Prompt, Sample  # noqa: E402

MODEL = "smollm2-135m-instruct"


def responses(n_prompts: int, per_prompt: int) -> tuple[list[Prompt], list[Sample]]:
    rows = [
        json.loads(line) for line in (ROOT / "configs/prompts/quickstart.jsonl").read_text().splitlines()[:n_prompts]
    ]
    prompts = [
        Prompt(
            id=f"p{i}",
            messages=[Message(role="user", content="\n\n".join(filter(None, [r["instruction"], r.get("input")])))],
        )
        for i, r in enumerate(rows)
    ]
    policy = TransformersChatGenerator(resolve_model_path(MODEL), "float32", "cpu")
    samples = []
    for k in range(per_prompt):
        replies = policy.generate([[m.model_dump() for m in p.messages] for p in prompts], 48, 0.7, seed=k)
        samples += [
            Sample(id=f"s{i}-{k}", prompt_id=p.id, response=r.text, policy_version=0)
            for i, (p, r) in enumerate(zip(prompts, replies))
        ]
    return prompts, samples


def kind(error: str | None) -> str:
    if error is None:
        return "judgment"
    for key, name in [
        ("cut off", "cut off"),
        ("placeholder", "echoed placeholder"),
        ("self-contradicting", "self-contradicting"),
        ("no JSON", "no JSON"),
    ]:
        if key in error:
            return name
    return "other error"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--per-prompt", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args()
    prompts, samples = responses(args.prompts, args.per_prompt)
    by_id = {p.id: p for p in prompts}
    print(f"{len(samples)} responses of {MODEL} to quickstart prompts, judged by {MODEL}\n")
    print(
        "| decoding | judgments | cut off | echoed placeholder | self-contradicting | no JSON | other | s per reply |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for constrained in (False, True):
        cfg = CritiqueModelJudgeConfig(
            path=MODEL,
            device="cpu",
            constrained=constrained,
            batch_size=args.batch_size,
            max_new_tokens=args.max_new_tokens,
            max_critique_chars=160,
        )
        judge = build_judge(cfg)
        start = time.perf_counter()
        out = asyncio.run(judge.judge([by_id[s.prompt_id] for s in samples], samples))
        took = (time.perf_counter() - start) / len(samples)
        n = Counter(kind(j.error) for j in out)
        name = "schema (llguidance)" if constrained else "free text"
        print(
            f"| {name} | {n['judgment']}/{len(out)} | {n['cut off']} | {n['echoed placeholder']} | "
            f"{n['self-contradicting']} | {n['no JSON']} | {n['other error']} | {took:.2f} |",
            flush=True,
        )
        verdicts = Counter(j.verdict for j in out if j.error is None)
        if verdicts:
            print(f"  verdicts: {dict(verdicts)}", file=sys.stderr)


if __name__ == "__main__":
    main()
