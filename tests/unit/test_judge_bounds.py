"""Bounds on what a judge server controls, over real HTTP: a reply larger than
judge.max_reply_bytes is not read whole (declared, streamed without a length, or a gzip bomb)
and a server that trickles its reply holds a request no longer than judge.deadline_s; both are
transport faults, retried, then a recorded judge error."""

from __future__ import annotations

import asyncio
import gzip
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from alignloop.judges.openai_judge import OpenAIJudge, OpenAIJudgeConfig
from tests.judge_fakes import prompts_and_samples

MB = 2**20
REPLY = json.dumps(
    {
        "id": "x",
        "object": "chat.completion",
        "created": 0,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "message": {
                    "role": "assistant",
                    "content": json.dumps({"critique": "Fine.", "verdict": "satisfactory", "score": 9}),
                },
            }
        ],
    }
).encode()


class HostileServer:
    """One behaviour for every request:
    huge      Content-Length of 200 MB, then that many bytes
    chunked   200 MB in chunks, no length given
    gzip      a valid reply padded with 64 MB of spaces, gzip-compressed (about 64 KB on the wire)
    trickle   a valid reply after 600 spaces, one every 50 ms (30 s in all)
    It counts the bytes it managed to send, and sets `done` after each request."""

    def __init__(self, mode: str):
        self.mode, self.sent, self.requests = mode, 0, 0
        self.done = threading.Semaphore(0)
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                server.requests += 1
                try:
                    getattr(server, server.mode)(self)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client stopped reading: what this test wants
                finally:
                    self.close_connection = True
                    server.done.release()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def write(self, h, data: bytes) -> None:
        h.wfile.write(data)
        h.wfile.flush()
        self.sent += len(data)

    def head(self, h, **headers) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        for k, v in headers.items():
            h.send_header(k.replace("_", "-"), str(v))
        h.end_headers()

    def huge(self, h):
        self.head(h, Content_Length=200 * MB)
        for _ in range(200):
            self.write(h, b" " * MB)

    def chunked(self, h):
        self.head(h, Transfer_Encoding="chunked")
        for _ in range(200):
            self.write(h, b"%x\r\n%s\r\n" % (MB, b" " * MB))
        self.write(h, b"0\r\n\r\n")

    def gzip(self, h):
        body = gzip.compress(b" " * (64 * MB) + REPLY, compresslevel=1)
        self.head(h, Content_Length=len(body), Content_Encoding="gzip")
        self.write(h, body)

    def trickle(self, h):
        self.head(h, Content_Length=600 + len(REPLY))
        for _ in range(600):
            self.write(h, b" ")
            time.sleep(0.05)
        self.write(h, REPLY)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def judge_once(url: str, **over):
    base = dict(model="m", base_url=url, api_key_env=None, cache=False, response_format="text", backoff_base_s=0.01)
    judge = OpenAIJudge(OpenAIJudgeConfig(**{**base, **over}))
    prompts, samples = prompts_and_samples(["good"])
    (j,) = asyncio.run(judge.judge(prompts, samples))
    return j, judge.usage()


@pytest.mark.parametrize("mode", ["huge", "chunked", "gzip"])
def test_a_reply_past_the_cap_is_not_read_whole_and_is_a_retried_transport_fault(mode):
    with HostileServer(mode) as srv:
        j, usage = judge_once(srv.url, max_reply_bytes=1 * MB, max_retries=1)
        for _ in range(2):  # both attempts' handlers have finished writing
            assert srv.done.acquire(timeout=120)
    assert j.verdict is None and "judge.max_reply_bytes (1048576 bytes)" in j.error
    assert "gave up after 2 attempts" in j.error and usage["requests"] == srv.requests == 2
    # Socket buffers take a few MB the client never reads; 200 MB would mean it read it all.
    assert srv.sent < 2 * 40 * MB


def test_the_same_gzip_reply_under_a_larger_cap_is_read():
    """The cap is what stopped the gzip bomb above, not the decoding itself."""
    with HostileServer("gzip") as srv:
        j, _ = judge_once(srv.url, max_reply_bytes=80 * MB, max_retries=0)
    assert j.error is None and j.verdict == "positive"


def test_a_trickling_server_ends_in_the_deadline_not_the_inactivity_timeout():
    """Each byte comes well within timeout_s, so only the total deadline can end the request;
    without it the reply would arrive whole after 30 s and be judged positive."""
    with HostileServer("trickle") as srv:
        j, usage = judge_once(srv.url, timeout_s=10.0, deadline_s=0.5, max_retries=1)
    assert j.verdict is None and "deadline of 0.5 s in all (judge.deadline_s)" in j.error
    assert "gave up after 2 attempts" in j.error and usage["requests"] == 2


def test_the_deadline_defaults_to_four_inactivity_timeouts():
    assert OpenAIJudgeConfig(model="m", timeout_s=15).request_deadline_s == 60
    assert OpenAIJudgeConfig(model="m", timeout_s=15, deadline_s=20).request_deadline_s == 20


def test_the_capped_client_still_goes_through_the_proxy_the_environment_names(monkeypatch):
    """A client given its own transport ignores HTTP_PROXY unless told; the fake server stands
    in for the proxy (it answers the absolute-form request a proxy receives)."""
    from tests.fake_openai_server import FakeOpenAIServer

    for var in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "http_proxy"):
        monkeypatch.delenv(var, raising=False)
    with FakeOpenAIServer() as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url.removesuffix("/v1"))
        j, _ = judge_once("http://judge.invalid/v1", max_retries=0)
    assert j.error is None and j.verdict == "positive" and proxy.requests == 1
