"""Judge tokens and cost per sample: per-sample vs group judging of the same samples, against
the local fake server (tests/fake_openai_server.py), which counts a word as a token and
answers a group request with one item per response.

    python scripts/bench_group_judging.py                      # 16 prompts x 4 responses
    python scripts/bench_group_judging.py --prompts 32 --k 8 --price-in 0.15 --price-out 0.60

Per-sample judging sends the judge prompt, the instruction and one response per request; group
judging sends the prompt and the instruction once per prompt with all k responses, and gets k
judgments in one reply. Both judge the same samples the same way here (the fake server's
verdict depends on the response alone), so the table compares what the judging costs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alignloop.judges.openai_judge import OpenAIJudge, OpenAIJudgeConfig  # noqa: E402
from alignloop.records import Message, Prompt, Sample  # noqa: E402
from tests.fake_openai_server import FakeOpenAIServer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def load(n_prompts: int, k: int) -> tuple[list[Prompt], list[Sample]]:
    """The quickstart's prompts with k answers each, of varied length (the judge says
    satisfactory to at most 40 words)."""
    rows = [json.loads(line) for line in (ROOT / "configs/prompts/quickstart.jsonl").read_text().splitlines() if line]
    prompts = [
        Prompt(id=f"p{i}", messages=[Message(role="user", content=row["instruction"])])
        for i, row in enumerate(rows[:n_prompts])
    ]
    filler = "The answer depends on the details, and here they are, explained at some length. "
    samples = [
        Sample(id=f"{p.id}-{n}", prompt_id=p.id, response=f"Answer {n}: " + filler * (1 + n), policy_version=0)
        for p in prompts
        for n in range(k)
    ]
    return prompts, samples


def judge_all(mode: str, prompts: list[Prompt], samples: list[Sample], args) -> dict:
    with FakeOpenAIServer(max_words=40) as server:
        judge = OpenAIJudge(
            OpenAIJudgeConfig(
                model="bench",
                base_url=server.url,
                api_key_env=None,
                cache=False,
                mode=mode,
                price_input_per_mtok=args.price_in,
                price_output_per_mtok=args.price_out,
            )
        )
        by_id = {p.id: p for p in prompts}
        out = asyncio.run(judge.judge([by_id[s.prompt_id] for s in samples], samples))
        verdicts = [j.verdict for j in out]
        u = judge.usage()
        n = len(samples)
        return {
            "mode": mode,
            "requests": server.requests,
            "prompt_tok/sample": server.tokens[0] / n,
            "completion_tok/sample": server.tokens[1] / n,
            "usd/1k samples": u["cost_usd"] / n * 1000,
            "judged": sum(j.error is None for j in out),
            "verdicts": verdicts,
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--k", type=int, default=4, help="responses per prompt")
    parser.add_argument("--price-in", type=float, default=0.15, help="USD per 1M prompt tokens (gpt-4o-mini)")
    parser.add_argument("--price-out", type=float, default=0.60, help="USD per 1M completion tokens")
    args = parser.parse_args()
    prompts, samples = load(args.prompts, args.k)
    rows = [judge_all(mode, prompts, samples, args) for mode in ("sample", "group")]
    same = rows[0]["verdicts"] == rows[1]["verdicts"]
    print(f"{len(prompts)} prompts x {args.k} responses = {len(samples)} samples; same verdicts in both modes: {same}")
    cols = ["mode", "requests", "prompt_tok/sample", "completion_tok/sample", "usd/1k samples", "judged"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(f"{r[c]:.4g}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
    saved = 1 - rows[1]["usd/1k samples"] / rows[0]["usd/1k samples"]
    print(f"group judging costs {saved:.0%} less per sample")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
