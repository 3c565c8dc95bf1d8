"""A local stand-in for vLLM's OpenAI server with runtime LoRA loading, for the server
sampler's tests: real HTTP on 127.0.0.1 in a background thread.

    GET  /v1/models               the base model and each loaded adapter (id, root = its path)
    POST /v1/load_lora_adapter    reads adapter_config.json (rank checked) and the weights' sha256
    POST /v1/unload_lora_adapter
    POST /v1/completions          prompt as token ids, n, seed, logprobs, return_tokens_as_token_ids

Sampling is a pure function of (prompt, seed, j, max_tokens), so two servers give the same
samples; a token's log-prob is a pure function of the token and the adapter's checksum
(`fake_logprob`), so a test can play the learner. Faults, queued per server with `fail(...)`:
    500      HTTP 500
    slow     answers after `slow_s` (past the client's timeout)
    drop     closes the connection without answering
    forget   forgets every adapter first (a restarted server), then answers as it now can
    down     (`down_after(n)`: after n completions) closes every connection, /models too, until `up()`
             brings it back with no adapters (a server that died and restarted)
Start-up flags as vLLM's: `lora=False` (no --enable-lora), `runtime=False` (no
VLLM_ALLOW_RUNTIME_LORA_UPDATING), `max_rank`; `api_key` wants that bearer key; `tamper`
serves every adapter with other weights than the file's (a wrong adapter behind its name).
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

BASE = "base-model"
STOP = 2  # the fake tokenizer's end-of-turn token


def fake_logprob(token: int, checksum: str | None) -> float:
    offset = int(checksum[:4], 16) % 13 if checksum else 0
    return -(((token * 7 + offset) % 50) / 10) - 0.05


def fake_tokens(
    prompt: list[int], seed: int, j: int, max_tokens: int, vocab: tuple[int, int] = (10, 99), stop: int = STOP
) -> tuple[list[int], str]:
    rng = random.Random(f"{prompt}:{seed}:{j}")
    n = rng.randint(1, max_tokens)
    ids = [rng.randint(*vocab) for _ in range(n)]
    if n < max_tokens or rng.random() < 0.5:
        return ids[: max(n - 1, 0)] + [stop], "stop"
    return ids, "length"


class FakeCompletionsServer:
    def __init__(
        self,
        lora: bool = True,
        runtime: bool = True,
        max_rank: int = 16,
        api_key: str | None = None,
        vocab: tuple[int, int] = (10, 99),
        stop: int = STOP,
    ):
        self.lora, self.runtime, self.max_rank, self.api_key = lora, runtime, max_rank, api_key
        self.vocab, self.stop_id = vocab, stop  # the token ids it samples from, its end-of-turn token
        self.down = False
        self.left = -1  # completions it answers before it goes down (-1: no limit)
        self.tamper = False
        self.reads_files = True  # False: adapter paths are not on its filesystem (no shared adapter_dir)
        self.slow_s = 5.0
        self.adapters: dict[str, tuple[str, str]] = {}  # name -> (path, checksum)
        self.faults: list[str] = []
        self.log: list[tuple[str, str]] = []  # (path, model or adapter name)
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def fail(self, *faults: str) -> None:
        with self.lock:
            self.faults += faults

    def down_after(self, n: int) -> None:
        self.left = n

    def up(self) -> None:
        """Back after a restart: answering, with no adapters loaded."""
        with self.lock:
            self.adapters.clear()
            self.down, self.left = False, -1

    def stop(self) -> None:
        """Gone: connections are refused from now on."""
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        try:
            self.stop()
        except OSError:
            pass

    def completions_for(self, name: str) -> int:
        return sum(1 for path, model in self.log if path == "/v1/completions" and model == name)

    # what each route answers: (status, body) --------------------------------------------
    def models(self) -> tuple[int, dict]:
        data = [{"id": BASE, "root": BASE}] + [
            {"id": n, "root": p, "parent": BASE} for n, (p, _) in self.adapters.items()
        ]
        return 200, {"object": "list", "data": data}

    def load(self, body: dict) -> tuple[int, dict]:
        if not self.runtime:
            return 404, {"detail": "Not Found"}
        name, path = body.get("lora_name"), Path(str(body.get("lora_path")))
        if not self.lora:
            return 500, _error("LoRA is not enabled. Use --enable-lora to enable LoRA.")
        if name in self.adapters and not body.get("load_inplace"):
            return 400, _error(f"The lora adapter '{name}' has already been loaded.")
        try:
            if not self.reads_files:
                raise OSError("another machine's path")
            config = json.loads((path / "adapter_config.json").read_text())
        except OSError:
            return 404, _error(f"Loading lora {name} failed: No adapter found for {path}")
        if config.get("r", 0) > self.max_rank:
            return 400, _error(f"LoRA rank {config['r']} is greater than max_lora_rank {self.max_rank}.")
        try:
            checksum = hashlib.sha256((path / "adapter_model.safetensors").read_bytes()).hexdigest()
        except OSError:
            return 404, _error(f"Loading lora {name} failed: No adapter found for {path}")
        self.adapters[name] = (str(path), "0" * 64 if self.tamper else checksum)
        return 200, {}

    def unload(self, body: dict) -> tuple[int, dict]:
        if self.adapters.pop(body.get("lora_name"), None) is None:
            return 404, _error(f"The lora adapter '{body.get('lora_name')}' cannot be found.")
        return 200, {}

    def complete(self, body: dict) -> tuple[int, dict]:
        model = body.get("model")
        if model != BASE and model not in self.adapters:
            return 404, _error(f"The model `{model}` does not exist.")
        checksum = None if model == BASE else self.adapters[model][1]
        choices = []
        for j in range(body.get("n", 1)):
            seed, max_tokens = body.get("seed", 0), body.get("max_tokens", 16)
            ids, finish = fake_tokens(body["prompt"], seed, j, max_tokens, self.vocab, self.stop_id)
            if finish == "stop" and self.stop_id not in body.get("stop_token_ids", [self.stop_id]):
                finish = "length"
            lp = None
            if body.get("logprobs") is not None:
                tokens = [f"token_id:{t}" if body.get("return_tokens_as_token_ids") else f"t{t}" for t in ids]
                lp = {"tokens": tokens, "token_logprobs": [fake_logprob(t, checksum) for t in ids]}
            choices.append({"index": j, "text": "", "logprobs": lp, "finish_reason": finish})
        return 200, {"object": "text_completion", "model": model, "choices": choices}

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _authorised(self) -> bool:
                if server.api_key and self.headers.get("Authorization") != f"Bearer {server.api_key}":
                    self._answer(401, _error("Unauthorized"))
                    return False
                return True

            def _gone(self) -> bool:
                with server.lock:
                    if self.path == "/v1/completions" and server.left == 0:
                        server.down = True
                    elif self.path == "/v1/completions" and server.left > 0:
                        server.left -= 1
                    down = server.down
                if down:
                    self.close_connection = True
                    self.connection.close()
                return down

            def do_GET(self):
                if self._gone() or not self._authorised():
                    return
                server.log.append((self.path, ""))
                self._answer(*(server.models() if self.path == "/v1/models" else (404, {"detail": "Not Found"})))

            def do_POST(self):
                if self._gone() or not self._authorised():
                    return
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                routes = {
                    "/v1/load_lora_adapter": server.load,
                    "/v1/unload_lora_adapter": server.unload,
                    "/v1/completions": server.complete,
                }
                with server.lock:
                    server.log.append((self.path, str(body.get("model") or body.get("lora_name"))))
                    fault = server.faults.pop(0) if server.faults and self.path == "/v1/completions" else None
                    if fault == "forget":
                        server.adapters.clear()
                if fault == "500":
                    return self._answer(500, _error("internal error"))
                if fault == "drop":
                    self.close_connection = True
                    return self.connection.close()
                if fault == "slow":
                    time.sleep(server.slow_s)
                handler = routes.get(self.path)
                if handler is None:
                    return self._answer(404, {"detail": "Not Found"})
                with server.lock:
                    status, answer = handler(body)
                self._answer(status, answer)

        return Handler


def _error(message: str) -> dict:
    return {"error": {"message": message, "type": "BadRequestError", "code": 400}}
