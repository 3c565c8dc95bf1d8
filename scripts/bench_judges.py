"""Throughput of the OpenAI-compatible judge at several concurrency levels, against the local
fake server (tests/fake_openai_server.py) answering every request after a fixed latency.
Shows that `concurrency` overlaps requests: ideal throughput is concurrency / latency.

    python scripts/bench_judges.py                               # 50 ms latency, concurrency 1 8 32
    python scripts/bench_judges.py --latency-ms 200 --concurrency 1 16 64

The server runs in its own process, so its threads do not compete with the judge's event
loop for the GIL; nothing leaves 127.0.0.1 and the cache is off, so every sample is a request.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alignloop.judges.openai_judge import OpenAIJudge, OpenAIJudgeConfig  # noqa: E402
from alignloop.records import Message, Prompt, Sample  # noqa: E402


def serve(latency_s: float, urls, stop) -> None:
    from tests.fake_openai_server import FakeOpenAIServer

    with FakeOpenAIServer(latency_s=latency_s) as server:
        urls.put(server.url)
        stop.wait()


def bench(url: str, concurrency: int, n: int) -> tuple[float, int]:
    """Seconds to judge n samples, and how many of them got a verdict."""
    cfg = OpenAIJudgeConfig(
        model="bench", base_url=url, api_key_env=None, cache=False, concurrency=concurrency, max_retries=0, timeout_s=30
    )
    judge = OpenAIJudge(cfg)
    prompt = Prompt(id="p", messages=[Message(role="user", content="Explain why the sky is blue.")])
    samples = [
        Sample(id=f"s{i}", prompt_id="p", response=f"Rayleigh scattering, answer {i}, good.", policy_version=0)
        for i in range(n)
    ]

    asyncio.run(judge.judge([prompt], samples[:1]))  # warm-up: imports the openai client
    # Timed as a run sees it: one judge call, connection set-up included.
    start = time.perf_counter()
    out = asyncio.run(judge.judge([prompt] * n, samples))
    return time.perf_counter() - start, sum(j.verdict is not None for j in out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency-ms", type=float, default=50.0, help="server latency per request")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument(
        "--rounds", type=int, default=20, help="samples per concurrency slot (n = rounds x concurrency)"
    )
    args = parser.parse_args()

    urls, stop = mp.Queue(), mp.Event()
    proc = mp.Process(target=serve, args=(args.latency_ms / 1000, urls, stop), daemon=True)
    proc.start()
    try:
        url = urls.get(timeout=30)
        print(f"OpenAI judge vs local fake server, {args.latency_ms:g} ms per request\n")
        print(f"{'concurrency':>11}  {'samples':>7}  {'seconds':>7}  {'samples/s':>9}  {'ideal':>7}  {'of ideal':>8}")
        for c in args.concurrency:
            n = args.rounds * c
            seconds, judged = bench(url, c, n)
            if judged != n:
                print(f"warning: only {judged}/{n} samples were judged", file=sys.stderr)
            ideal = c / (args.latency_ms / 1000)
            rate = n / seconds
            print(f"{c:>11}  {n:>7}  {seconds:>7.2f}  {rate:>9.1f}  {ideal:>7.0f}  {rate / ideal:>8.0%}")
    finally:
        stop.set()
        proc.join(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
