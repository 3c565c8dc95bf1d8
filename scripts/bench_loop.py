"""Where an iteration's time goes in three modes, against a judge with real latency (the local
fake OpenAI-compatible server answering every request after `--latency-s`, 2 s by default, as
a hosted model): judging after sampling (sequential), judging overlapped with sampling
(judging.streaming, the default), and sampling ahead of the learner as well
(asynchronous.max_staleness 1, with the cores split between the sampler and the learner).

    python scripts/bench_loop.py                        # quickstart prompts, 3 iterations per mode
    python scripts/bench_loop.py --latency-s 1 --iterations 4

Each mode is a full `alignloop run` on a local Ray instance (the embedded model, the same seed
and prompts); the table shows the per-phase times the runs recorded and the wall time per
iteration (means over the iterations after the first, whose sampling warms up and which
sampling ahead cannot overlap with a learn step), and how the sample+judge wall time compares
with the slower of the two phases (1.00: judging entirely hidden behind sampling, or the
reverse; the sum of both: no overlap). The sequential and streaming artifacts are compared byte
for byte (sampling ahead samples from older adapters, so its own artifacts differ by design).
The sampler phase is set against a raw `model.generate` of a chunk of the same size (2
quickstart prompts x 4 samples x exactly 48 tokens).
The judge passes a response of at most 40 words (the quickstart's rule, behind the server), so
SFT has rows to learn from, and the learn phase of the streaming run's last iteration is set
against a raw transformers + PEFT forward and backward over the same rows, in the same
micro-batches, with the same LoRA.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from side_by_side import run_variants  # noqa: E402

OUT = Path("runs/bench-loop")


def serve(latency_s: float, urls, stop) -> None:
    from tests.fake_openai_server import FakeOpenAIServer

    with FakeOpenAIServer(latency_s=latency_s, max_words=40) as server:
        urls.put(server.url)
        stop.wait()


def raw_learn_s(run_dir: Path, iteration: int) -> tuple[float, int]:
    """Seconds for a plain forward+backward+step loop over the rows SFT trained on in that
    iteration (its positives), and how many rows: the floor the learn phase is measured against."""
    import torch
    from peft import LoraConfig, get_peft_model

    from alignloop.loop.config import load_config
    from alignloop.loop.store import RunStore
    from alignloop.policies.model import load_model, load_tokenizer, render_prompt, resolve_model_path

    cfg = load_config(run_dir / "config.yaml")
    store = RunStore(run_dir)
    prompts, samples = store.load_samples(iteration)
    judgments = store.load_judgments(iteration)
    by_id = {p.id: p for p in prompts}
    path = resolve_model_path(cfg.model.path)
    tokenizer = load_tokenizer(path)
    rows = [
        (render_prompt(tokenizer, by_id[s.prompt_id].messages), s.token_ids)
        for s, j in zip(samples, judgments)
        if j.verdict == "positive"
    ]
    lora = cfg.model.lora
    model = get_peft_model(
        load_model(path, cfg.model.dtype, "cpu"),
        LoraConfig(
            r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=list(lora.target_modules)
        ),
    )
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.learner.lr)
    mini, micro = cfg.learner.minibatch_size, cfg.learner.micro_batch_size
    pad = tokenizer.pad_token_id
    start = time.perf_counter()
    for _ in range(cfg.learner.epochs):
        for m in range(0, len(rows), mini):
            for u in range(m, min(m + mini, len(rows)), micro):
                part = rows[u : min(u + micro, m + mini, len(rows))]
                width = max(len(p) + len(r) for p, r in part)
                ids = torch.tensor([p + r + [pad] * (width - len(p) - len(r)) for p, r in part])
                labels = torch.tensor([[-100] * len(p) + r + [-100] * (width - len(p) - len(r)) for p, r in part])
                mask = (torch.arange(width)[None, :] < torch.tensor([len(p) + len(r) for p, r in part])[:, None]).long()
                (model(input_ids=ids, attention_mask=mask, labels=labels).loss * len(part) / mini).backward()
            opt.step()
            opt.zero_grad()
    return time.perf_counter() - start, len(rows)


def raw_generate_tok_s(chunk: int, k: int, tokens: int) -> float:
    """Tokens per second of a plain `model.generate` of the base model over a chunk of the
    size the sampler phase generates (the first `chunk` quickstart prompts x k samples x
    exactly `tokens` tokens each)."""
    import torch
    from bench_hf_sampling import MODEL, batch, timed

    from alignloop.policies.model import load_model, load_tokenizer, resolve_model_path

    torch.set_num_threads(os.cpu_count() or 1)
    path = resolve_model_path(MODEL)
    tokenizer = load_tokenizer(path)
    model = load_model(path, "float32", "cpu").eval()
    inputs = batch(tokenizer, chunk)
    # Every chunk has the same shape, so the rate over all of them is this one's.
    return timed(model, inputs, k, tokens, repeats=2, pad=tokenizer.pad_token_id)


def judge_override(url: str, concurrency: int) -> str:
    return "judge=" + json.dumps(
        {
            "type": "openai",
            "model": "bench",
            "base_url": url,
            "api_key_env": None,
            "cache": False,
            "concurrency": concurrency,
            "max_retries": 0,
            "timeout_s": 60,
        }
    )


def same_artifacts(a: Path, b: Path) -> bool:
    def strip(p):
        return [{k: v for k, v in json.loads(line).items() if k != "latency_s"} for line in p.read_text().splitlines()]

    names = ["prompts.jsonl", "samples.jsonl", "adapter/adapter_model.safetensors"]
    for d in sorted(a.glob("iter-*")):
        if any((d / n).read_bytes() != (b / d.name / n).read_bytes() for n in names):
            return False
        if strip(d / "judgments.jsonl") != strip(b / d.name / "judgments.jsonl"):
            return False
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--latency-s", type=float, default=2.0)
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--prompts", type=int, default=8, help="prompts per iteration")
    ap.add_argument("--concurrency", type=int, default=4, help="requests in flight per judge actor")
    args = ap.parse_args()

    urls, stop = mp.Queue(), mp.Event()
    server = mp.Process(target=serve, args=(args.latency_s, urls, stop), daemon=True)
    server.start()
    url = urls.get(timeout=30)
    # Small sampler and judge chunks, so there is something to overlap within an iteration.
    common = [
        judge_override(url, args.concurrency),
        f"iterations={args.iterations}",
        f"data.prompts_per_iteration={args.prompts}",
        "sampler.batch_size=2",
        "sampler.max_new_tokens=48",
        "judging.chunk_size=4",
        "judging.in_flight=2",
        "learner.epochs=1",
    ]
    half = str(max(1, (os.cpu_count() or 2) // 2))
    variants = {
        "sequential": ["judging.streaming=false"],
        "streaming": ["judging.streaming=true"],
        "async": [
            "judging.streaming=true",
            "asynchronous.max_staleness=1",
            f"sampler.threads={half}",
            f"learner.threads={half}",
        ],
    }
    try:
        results, wall = run_variants(ROOT / "configs/quickstart.yaml", variants, OUT, common, overwrite=True)
    finally:
        stop.set()
        server.join(timeout=10)

    def mean(rows, key):
        rows = rows[1:] or rows
        return sum(r.get(key, 0) for r in rows) / len(rows)

    print(
        f"\n{os.cpu_count()} cores; judge latency {args.latency_s} s per request, "
        f"{args.concurrency} in flight per judge actor; {args.prompts} prompts x 4 samples per iteration\n"
    )
    raw = raw_generate_tok_s(2, 4, 48)
    print(f"raw model.generate of one sampler chunk (2 prompts x 4 samples x 48 tokens, all cores): {raw:.0f} tok/s\n")
    print(
        "| mode | sample s | sampler tok/s (of raw) | judge s | sample+judge wall s | wall / slower phase | learn s "
        "| iteration wall s | vs sequential |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    base = mean(results["sequential"], "iteration_s")
    for name, rows in results.items():
        sample, judge, learn = mean(rows, "sample_s"), mean(rows, "judge_s"), mean(rows, "learn_s")
        both = sample + judge if name == "sequential" else mean(rows, "sample_judge_s")
        rate = mean(rows, "tokens_sampled") / sample
        iteration = mean(rows, "iteration_s")
        print(
            f"| {name} | {sample:.1f} | {rate:.0f} ({rate / raw:.2f}) | {judge:.1f} | {both:.1f} | "
            f"{both / max(sample, judge):.2f} | {learn:.1f} | {iteration:.1f} | {iteration / base:.2f} |"
        )
    print(f"\nartifacts identical across modes: {same_artifacts(OUT / 'sequential', OUT / 'streaming')}")
    last = results["streaming"][-1]
    floor, n = raw_learn_s(OUT / "streaming", args.iterations)
    print(
        f"learn phase of iteration {args.iterations}: {last['learn_s']:.1f} s for {last.get('n_train')} rows; raw "
        f"forward+backward+step over the same {n} rows: {floor:.1f} s ({last['learn_s'] / floor:.2f}x)"
    )
    print("run wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in wall.items()))


if __name__ == "__main__":
    main()
