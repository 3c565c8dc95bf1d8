"""A local OpenAI-compatible /v1/chat/completions server for tests and benchmarks: real HTTP
on 127.0.0.1 in a background thread, able to inject what real APIs do.

Faults, per request:
    429       HTTP 429 with a Retry-After header
    500       HTTP 500
    slow      answers only after `slow_s` (past the client's timeout)
    drop      closes the connection without answering
    badbody   HTTP 200 whose body is truncated, malformed JSON (a broken proxy)
    empty     HTTP 200 with an empty body
    blank     HTTP 200 whose body is only whitespace
    nochoices HTTP 200, a completion with an empty `choices` list
    nullmsg   HTTP 200, a choice whose message content is null
    emptymsg  HTTP 200, a choice whose message content is "" or only whitespace
    badjson   HTTP 200 whose reply is malformed JSON
    prose     HTTP 200 whose reply is prose with no JSON in it
    fenced    HTTP 200, the JSON judgment inside a ```json fence (a success)
    wrapped   HTTP 200, the JSON judgment inside a sentence (a success)

What a weak judge model (a 135M one behind vLLM's server) was seen to answer:
    echo      HTTP 200, the prompt's placeholder critique and quote copied back, with a verdict
    contra    HTTP 200, a verdict its own score contradicts ("satisfactory", 1 of 10)
    length    HTTP 200, the reply cut off mid-JSON, finish_reason "length"

Rate limits as hosted APIs enforce them (`rate_limit=(n, window_s)`): at most n requests are
answered per fixed window; every reply carries `x-ratelimit-limit-requests`,
`x-ratelimit-remaining-requests` and `x-ratelimit-reset-requests` (a duration such as
"250ms"), and a request past the limit gets HTTP 429 with those headers and no Retry-After
(logged as fault "ratelimit"; it does not count against the window).

A fault is chosen either by a script in the response under judgment (`FAULTS=429,500` makes
the first attempt for that sample a 429, the second a 500, later ones succeed) or at random
with probability `fault_rate`. Every request is logged with the sample it was for and the
fault it got, so a test can work out exactly how many requests each sample should cost.

A request holding numbered responses (`<<<BEGIN RESPONSE n digest>>>`, judges/group.py) gets a
group reply, {"judgments": [...]}, one item per response; `GROUP=missing2`, `GROUP=dup1`,
`GROUP=bad3` (an item with an unreadable verdict), `GROUP=reverse` (items in reverse order)
or `GROUP=none` (no list at all) in the instruction shape it. Asked to rank (`"rank"` in the
request), each item gets its rank by score, ties by number; `GROUP=tie` ranks the first two equal.

A request with a rubric (lines `- name [weight]: ...`, judges/rubric.py) gets one item per
criterion: those named in `FAIL=a,b` inside the response fail (score 3, quoting the response's
first two words), the others pass (score 9); `RUBRIC=missing` leaves the last one out.

The verdict is deterministic: a response containing "good" is satisfactory (score 9),
anything else unsatisfactory (score 3); with `max_words`, a response of at most that many
words is satisfactory instead (a rule check with an API's latency, for benchmarks).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

FAULTS = ("429", "500", "slow", "drop", "badbody", "badjson", "prose")
# HTTP 200 with nothing the judge model wrote in it: server faults, not judgments.
EMPTY_200 = ("empty", "blank", "nochoices", "nullmsg", "emptymsg")
_SCRIPT = re.compile(r"FAULTS=([\w,]+)")
_RESPONSE = re.compile(r"<<<BEGIN RESPONSE (\w+)>>>\n(.*?)\n<<<END RESPONSE \1>>>", re.DOTALL)
_NUMBERED = re.compile(r"<<<BEGIN RESPONSE (\d+) (\w+)>>>\n(.*?)\n<<<END RESPONSE \1 \2>>>", re.DOTALL)
_GROUP_SCRIPT = re.compile(r"GROUP=(missing|dup|bad|reverse|none|tie)(\d*)")


@dataclass(frozen=True)
class Logged:
    key: str  # which sample (a digest of the user message)
    attempt: int  # 0 for the first request about that sample
    fault: str  # "ok" or one of the faults above
    at: float = 0.0  # time.monotonic() when the request arrived


class FakeOpenAIServer:
    def __init__(
        self,
        latency_s: float = 0.0,
        fault_rate: float = 0.0,
        faults=FAULTS,
        seed: int = 0,
        retry_after: str = "0",
        slow_s: float = 1.0,
        port: int = 0,
        max_words: int | None = None,
        rate_limit: tuple[int, float] | None = None,
    ):
        self.latency_s, self.fault_rate, self.faults = latency_s, fault_rate, tuple(faults)
        self.max_words = max_words
        self.retry_after, self.slow_s = retry_after, slow_s
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.log: list[Logged] = []
        self.bodies: list[dict] = []
        self.auth: set[str] = set()  # Authorization headers seen
        self.tokens = [0, 0]  # prompt, completion tokens in the usage the server reported
        self.active = self.max_active = 0  # requests being answered now / at most at once
        self._attempts: dict[str, int] = {}
        self.rate_limit = rate_limit
        self._window = (0, 0)  # (index of the current window, requests answered in it)
        self.httpd = _Server(("127.0.0.1", port), _handler(self))
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    @property
    def requests(self) -> int:
        return len(self.log)

    def start(self) -> FakeOpenAIServer:
        self.started = time.monotonic()
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def attempts_by_key(self) -> dict[str, list[str]]:
        """key -> the faults its requests got, in order."""
        out: dict[str, list[str]] = {}
        for entry in sorted(self.log, key=lambda e: e.attempt):
            out.setdefault(entry.key, []).append(entry.fault)
        return out

    # deciding what a request gets -------------------------------------------------------
    def enter(self, headers) -> None:
        with self.lock:
            self.auth.add(headers.get("Authorization", ""))
            self.active += 1
            self.max_active = max(self.max_active, self.active)

    def leave(self) -> None:
        with self.lock:
            self.active -= 1

    def windows(self) -> dict[int, int]:
        """Requests that arrived in each rate-limit window (all of them, throttled ones too)."""
        assert self.rate_limit is not None
        counts: dict[int, int] = {}
        for e in self.log:
            w = int((e.at - self.started) // self.rate_limit[1])
            counts[w] = counts.get(w, 0) + 1
        return counts

    def admit(self, now: float) -> tuple[bool, dict]:
        """Under the lock: whether the rate limit lets this request through, and the headers saying where it stands."""
        if self.rate_limit is None:
            return True, {}
        limit, window_s = self.rate_limit
        index = int((now - self.started) // window_s)
        used = self._window[1] if self._window[0] == index else 0
        admitted = used < limit
        self._window = (index, used + admitted)
        reset_ms = max(1, round(((index + 1) * window_s - (now - self.started)) * 1000))
        return admitted, {
            "x-ratelimit-limit-requests": str(limit),
            "x-ratelimit-remaining-requests": str(limit - used - admitted),
            "x-ratelimit-reset-requests": f"{reset_ms}ms",
        }

    def decide(self, body: dict) -> tuple[Logged, str, dict]:
        user = next(m["content"] for m in reversed(body["messages"]) if m["role"] == "user")
        key = hashlib.sha256(user.encode()).hexdigest()[:16]
        with self.lock:
            now = time.monotonic()
            attempt = self._attempts.get(key, 0)
            self._attempts[key] = attempt + 1
            admitted, headers = self.admit(now)
            script = _SCRIPT.search(user)
            if not admitted:
                fault = "ratelimit"
            elif script:
                steps = script.group(1).split(",")
                fault = steps[attempt] if attempt < len(steps) else "ok"
            elif self.fault_rate and self.rng.random() < self.fault_rate:
                fault = self.rng.choice(self.faults)
            else:
                fault = "ok"
            entry = Logged(key, attempt, fault, now)
            self.log.append(entry)
            self.bodies.append(body)
        return entry, user, headers


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # The default backlog of 5 would refuse connections when 32 clients arrive at once; a
    # refused connection never reaches the log, and request counts would no longer add up.
    request_queue_size = 1024

    def handle_error(self, request, client_address):
        """A client closing its kept-alive connection (or timing out) is normal here."""
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def judgment_for(user: str, max_words: int | None = None) -> dict:
    m = _RESPONSE.search(user)
    response = m.group(2) if m else user
    if ("good" in response) if max_words is None else len(response.split()) <= max_words:
        return {"critique": "The response is perfect.", "verdict": "satisfactory", "score": 9}
    return {"critique": "The response is vague and misses the point.", "verdict": "unsatisfactory", "score": 3}


def group_reply(user: str, max_words: int | None = None) -> str | None:
    """The reply to a group request (None: the request is for one response)."""
    numbered = _NUMBERED.findall(user)
    if not numbered:
        return None
    items = [
        {
            "response": int(n),
            "quotes": [],
            **judgment_for(f"<<<BEGIN RESPONSE x>>>\n{text}\n<<<END RESPONSE x>>>", max_words),
        }
        for n, _, text in numbered
    ]
    script = _GROUP_SCRIPT.search(user.split("<<<BEGIN RESPONSE")[0])  # the instruction's, not a response's
    how, which = (script.group(1), int(script.group(2) or 0)) if script else ("", 0)
    if 'give each item a "rank"' in user:
        for r, i in enumerate(sorted(items, key=lambda i: (-i["score"], i["response"])), 1):
            i["rank"] = r
        if how == "tie":
            items[1]["rank"] = items[0]["rank"]
    if how == "none":
        return json.dumps({"note": "I compared them."})
    if how == "missing":
        items = [i for i in items if i["response"] != which]
    elif how == "dup":
        items.append({**items[which - 1], "critique": "Judged again."})
    elif how == "bad":
        items[which - 1] = {**items[which - 1], "verdict": "maybe"}
    elif how == "reverse":
        items.reverse()
    return json.dumps({"judgments": items})


_CRITERION = re.compile(r"^- ([A-Za-z0-9_-]+) \[", re.MULTILINE)


def rubric_reply(user: str) -> str | None:
    """The reply to a rubric request (None: no rubric in it)."""
    if "each of these criteria" not in user:
        return None
    m = _RESPONSE.search(user)
    response = m.group(2) if m else ""
    found = re.search(r"FAIL=([\w,-]+)", response)
    failing = set(found.group(1).split(",")) if found else set()
    items = [
        {
            "criterion": n,
            "critique": f"Falls short on {n}.",
            "quotes": [" ".join(response.split()[:2])],
            "verdict": "unsatisfactory",
            "score": 3,
        }
        if n in failing
        else {"criterion": n, "critique": "Meets it.", "quotes": [], "verdict": "satisfactory", "score": 9}
        for n in _CRITERION.findall(user)
    ]
    if "RUBRIC=missing" in response:
        items.pop()
    return json.dumps({"criteria": items})


def reply_content(fault: str, user: str, max_words: int | None = None) -> str:
    group = (group_reply(user, max_words) or rubric_reply(user)) if fault == "ok" else None
    if group is not None:
        return group
    obj = json.dumps(judgment_for(user, max_words))
    return {
        "badjson": obj[: len(obj) // 2],
        "prose": "Overall I think the response is mostly fine, though it could be better.",
        "fenced": f"Here is my judgment.\n```json\n{obj}\n```",
        "wrapped": f"My judgment: {obj} I hope this helps.",
        "echo": json.dumps(
            {
                "critique": "<the errors and shortcomings, or: The response is perfect.>",
                "quotes": ["<a faulty passage, copied exactly from the response>"],
                "verdict": "satisfactory",
                "score": 9,
            }
        ),
        "contra": json.dumps({"critique": "The response is perfect.", "verdict": "satisfactory", "score": 1}),
        "length": obj[: len(obj) // 3],
    }.get(fault, obj)


def _handler(server: FakeOpenAIServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as real APIs, so dropped connections matter

        def setup(self):
            super().setup()
            # Headers and body go out as separate writes; without this, Nagle's algorithm
            # and delayed ACKs add ~40 ms to every answer and swamp the latency we set.
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def log_message(self, *args):  # quiet
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            if not self.path.endswith("/chat/completions"):
                return self.send_json(404, {"error": {"message": f"no route {self.path}"}})
            server.enter(self.headers)
            try:
                self.answer(*server.decide(body), body)
            finally:
                server.leave()

        def answer(self, entry: Logged, user: str, limits: dict, body: dict):
            time.sleep(server.latency_s)
            fault = entry.fault
            if fault == "ratelimit":
                error = {
                    "message": "Rate limit reached for requests",
                    "type": "requests",
                    "code": "rate_limit_exceeded",
                }
                return self.send_json(429, {"error": error}, limits)
            if fault == "drop":
                self.close_connection = True
                return
            if fault == "429":
                return self.send_json(
                    429,
                    {"error": {"message": "Rate limit reached", "type": "rate_limit_error"}},
                    {"Retry-After": server.retry_after},
                )
            if fault == "500":
                return self.send_json(500, {"error": {"message": "The server had an error", "type": "server_error"}})
            if fault == "badbody":
                return self.send_raw(200, b'{"id": "chatcmpl-x", "choices": [{"index": 0, "mess')
            if fault in ("empty", "blank"):
                return self.send_raw(200, b"" if fault == "empty" else b" \n\t \n")
            if fault == "slow":
                time.sleep(server.slow_s)
            content = {"nullmsg": None, "emptymsg": " \n "}.get(fault, reply_content(fault, user, server.max_words))
            prompt_tokens = sum(len(m["content"].split()) for m in body["messages"])
            completion_tokens = len((content or "").split())
            with server.lock:
                server.tokens[0] += prompt_tokens
                server.tokens[1] += completion_tokens
            self.send_json(
                200,
                {
                    "id": f"chatcmpl-{len(server.log)}",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": body.get("model", "fake"),
                    "choices": []
                    if fault == "nochoices"
                    else [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": content},
                            "finish_reason": "length" if fault == "length" else "stop",
                        }
                    ],
                    "usage": {
                        "prompt_tokens": prompt_tokens,
                        "completion_tokens": completion_tokens,
                        "total_tokens": prompt_tokens + completion_tokens,
                    },
                },
                limits,
            )

        def send_json(self, status: int, obj: dict, headers: dict | None = None):
            self.send_raw(status, json.dumps(obj).encode(), headers)

        def send_raw(self, status: int, data: bytes, headers: dict | None = None):
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (a timeout): nothing to answer

    return Handler


def main() -> None:
    """Serve until interrupted, for a run's judge on a CPU (configs/quickstart-group.yaml):

    python -m tests.fake_openai_server --port 8765 --max-words 40
    """
    import argparse

    parser = argparse.ArgumentParser(description="A local OpenAI-compatible judge server for tests and demos.")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument(
        "--max-words", type=int, default=None, help="satisfactory: a response of at most this many words"
    )
    parser.add_argument("--latency-ms", type=float, default=0.0)
    args = parser.parse_args()
    with FakeOpenAIServer(latency_s=args.latency_ms / 1000, port=args.port, max_words=args.max_words) as server:
        print(f"serving {server.url} (Ctrl-C to stop)", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass
        print(f"{server.requests} requests, {server.tokens[0]} prompt and {server.tokens[1]} completion tokens")


if __name__ == "__main__":
    main()
