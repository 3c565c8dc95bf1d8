"""Keys and credentials around the OpenAI-compatible judge: credentials in base_url work (a
token-only URL is the bearer key, user:password is HTTP Basic, with and without a port, in the
preflight check too) and are masked wherever they could reappear; a server that echoes the
Authorization header back puts no key into a judgment, judgments.jsonl or stderr; a garbage
base_url is a config error naming the field, never a traceback or the key."""

from __future__ import annotations

import asyncio
import base64
import json
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread

import pytest

from alignloop.judges.openai_judge import OpenAIJudge, OpenAIJudgeConfig
from alignloop.loop.config import ConfigError, to_yaml, validate_config
from alignloop.records.secrets import mask_secrets
from tests.fake_openai_server import FakeOpenAIServer
from tests.judge_fakes import judge as judge_phase
from tests.judge_fakes import make_steps, prompts_and_samples


@pytest.fixture
def server():
    with FakeOpenAIServer() as s:
        yield s


def with_credentials(url: str, userinfo: str) -> str:
    scheme, rest = url.split("://", 1)
    return f"{scheme}://{userinfo}@{rest}"


def judge_once(cfg: OpenAIJudgeConfig, text: str = "good answer"):
    prompts, samples = prompts_and_samples([text])
    return asyncio.run(OpenAIJudge(cfg).judge(prompts, samples))[0]


def config(base_url: str, **over) -> OpenAIJudgeConfig:
    return OpenAIJudgeConfig(model="m", base_url=base_url, cache=False, max_retries=0, **over)


# credentials in base_url ----------------------------------------------------------------------


def test_a_token_only_url_is_the_bearer_key_and_no_key_variable_is_read(server, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)  # the default api_key_env: it must not be needed
    token = "tok-0123456789abcdef"
    cfg = config(with_credentials(server.url, token))
    cfg.preflight()  # the check parses a URL with credentials and a port
    j = judge_once(cfg)
    assert j.error is None and j.verdict == "positive"
    assert server.auth == {f"Bearer {token}"}
    assert token not in mask_secrets(f"the url was {cfg.base_url}; it said {token}")


def test_user_and_password_go_as_http_basic_decoded_even_with_an_api_key_variable_set(server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-environment-key-must-not-travel")
    password = "p@ss:word-9876"
    cfg = config(with_credentials(server.url, f"alice:{urllib.parse.quote(password, safe='')}"))
    cfg.preflight()
    j = judge_once(cfg)
    assert j.error is None and j.verdict == "positive"
    basic = base64.b64encode(f"alice:{password}".encode()).decode()
    assert server.auth == {f"Basic {basic}"}
    shown = mask_secrets(f"{password} / {basic} / {cfg.base_url}")
    assert password not in shown and basic not in shown and "alice" in shown


def test_credentials_without_a_port_are_parsed_and_masked():
    cfg = config("https://bob:hunter2-secret@judge.example.com/v1", api_key_env=None)
    saved = to_yaml(validate_config({"name": "t", "data": {"path": "p.jsonl"}, "judge": cfg.model_dump()}))
    assert "hunter2-secret" not in saved and "judge.example.com" in saved
    assert "hunter2-secret" not in mask_secrets("an error body that says hunter2-secret")


def test_an_unreachable_endpoint_with_credentials_is_a_config_error_without_them(monkeypatch):
    cfg = config("http://carol:very-secret-pw@127.0.0.1:9/v1")
    with pytest.raises(ConfigError, match=r"cannot reach http://127\.0\.0\.1:9/v1") as e:
        cfg.preflight()
    assert "very-secret-pw" not in str(e.value) and "carol" not in str(e.value)


@pytest.mark.parametrize(
    "base_url",
    [
        "not a url",
        "api.openai.com/v1",
        "file:///etc/passwd",
        "ftp://example.com/v1",
        "https://",
        "http://localhost:99999/v1",
        "http://localhost:port/v1",
        "https://api.openai.com/v1 ",
        "http://[::1/v1",
        "sk-proj-0123456789abcdefghijklmnop",
        "",
    ],
)
def test_a_garbage_base_url_is_a_config_error_naming_the_field(base_url):
    raw = {"name": "t", "data": {"path": "p.jsonl"}, "judge": {"type": "openai", "model": "m", "base_url": base_url}}
    with pytest.raises(ConfigError, match=r"judge\.base_url: .*give an http:// or https:// URL") as e:
        validate_config(raw)
    assert "0123456789abcdefghijklmnop" not in str(e.value)


def test_a_garbage_base_url_quotes_only_a_short_masked_prefix():
    url = "gopher://user:pasted-secret-99@" + "x" * 10_000
    raw = {"name": "t", "data": {"path": "p.jsonl"}, "judge": {"type": "openai", "model": "m", "base_url": url}}
    with pytest.raises(ConfigError, match="judge.base_url") as e:
        validate_config(raw)
    assert "pasted-secret-99" not in str(e.value) and len(str(e.value)) < 600


# a server that echoes the Authorization header -----------------------------------------------


class EchoingServer:
    """Answers every request with HTTP 400 whose body repeats the request's Authorization
    header, as some proxies and debugging servers do."""

    def __init__(self, padding: int = 0):
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                auth = self.headers.get("Authorization", "")
                raw = auth.split()[-1] if auth else ""
                said = f"bad request; you sent {auth} (raw: {raw}){' and more' * padding}"
                body = json.dumps({"error": {"message": said}})
                data = body.encode()
                self.send_response(400)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def files_under(root: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in sorted(root.rglob("*")) if p.is_file())


@pytest.mark.parametrize("key_shape", ["sk-proj-abcdefghijklmnop0123", "plain-Secret-value-9876"])
def test_an_echoed_key_reaches_no_judgment_file_or_stderr(key_shape, tmp_path, monkeypatch, capsys):
    """A key of a known shape and one of no known shape (masked because the process read it
    from the environment)."""
    monkeypatch.setenv("ECHO_JUDGE_KEY", key_shape)
    with EchoingServer() as srv:
        judge = config(srv.url, api_key_env="ECHO_JUDGE_KEY", response_format="text").model_dump()
        steps = make_steps(judge, tmp_path / "run", actors=1, max_error_rate=1.0)
        prompts, samples = prompts_and_samples(["good one", "bad one"])
        judgments, _ = judge_phase(steps, prompts, samples)
        steps.store.save_judgments(1, judgments)
    assert all("HTTP 400" in j.error and "***" in j.error for j in judgments)
    written = files_under(tmp_path / "run")
    assert "judgments.jsonl" in {p.name for p in (tmp_path / "run").rglob("*")}
    err = capsys.readouterr()
    for text in (written, err.out, err.err, *(j.error for j in judgments)):
        assert key_shape not in text


def test_a_long_error_body_is_cut_short():
    with EchoingServer(padding=100_000) as srv:
        prompts, samples = prompts_and_samples(["good"])
        cfg = config(srv.url, api_key_env=None, response_format="text")
        (j,) = asyncio.run(OpenAIJudge(cfg).judge(prompts, samples))
    assert j.error.startswith("BadRequestError (HTTP 400)") and len(j.error) <= 400


def test_the_cache_key_holds_no_credentials_and_is_unchanged_for_a_plain_url():
    """A new password keeps the cached judgments; a URL without credentials hashes as before."""
    messages = [{"role": "user", "content": "q"}]
    plain = OpenAIJudge(config("http://judge.example:8000/v1", api_key_env=None))
    old = OpenAIJudge(config("http://ann:old-password-1@judge.example:8000/v1"))
    new = OpenAIJudge(config("http://ann:new-password-2@judge.example:8000/v1"))
    assert plain.identity(messages)["base_url"] == "http://judge.example:8000/v1"
    assert plain.identity(messages) == old.identity(messages) == new.identity(messages)


def test_error_text_is_masked_before_it_is_cut(monkeypatch):
    """A key straddling the cut must not leave its first half behind."""
    from alignloop.judges.openai_judge import ERROR_CHARS, safe_text
    from alignloop.records.secrets import env_secret

    monkeypatch.setenv("STRADDLE_KEY", "QwErTy-0987-straddling")
    key = env_secret("STRADDLE_KEY")
    text = safe_text("x" * (ERROR_CHARS - 8) + key + " and a reply of any length" * 1000)
    assert "QwErTy" not in text and len(text) <= ERROR_CHARS + 3
