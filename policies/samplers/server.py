"""One OpenAI-compatible inference server (vLLM's `vllm serve`, runtime LoRA loading on):
its model list, LoRA load/unload, and completions with the prompt as token ids, the sampled
token ids and their log-probs returned. Every error names the server and what it said
(masked, cut short); `retryable` says whether another server (or a later try) may succeed."""

from __future__ import annotations

import os
from dataclasses import dataclass

import httpx

from alignloop.records.secrets import mask_secrets, register_secret

# A server's own error text, as much as a message shows.
MESSAGE_LIMIT = 300


class ServerError(Exception):
    def __init__(self, url: str, what: str, status: int | None = None, retryable: bool = True):
        super().__init__(f"{url}: {what}")
        self.url, self.what, self.status, self.retryable = url, what, status, retryable


def bearer_headers(api_key_env: str | None) -> dict[str, str]:
    """The Authorization header from the variable `api_key_env` names (registered for masking,
    never written anywhere); {} without one."""
    if not api_key_env:
        return {}
    key = os.environ.get(api_key_env)
    if not key:
        from alignloop.records.errors import ConfigError

        raise ConfigError(f"environment variable {api_key_env} is not set (sampler.server.api_key_env names it)")
    register_secret(key)
    return {"Authorization": f"Bearer {key}"}


def error_text(response: httpx.Response) -> str:
    """What the server said: its JSON error message, else the body's start."""
    try:
        body = response.json()
        message = body.get("error", {}).get("message") if isinstance(body.get("error"), dict) else None
        text = message or body.get("message") or body.get("detail") or response.text
    except (ValueError, AttributeError):
        text = response.text
    return mask_secrets(str(text))[:MESSAGE_LIMIT]


def checked(url: str, response: httpx.Response) -> httpx.Response:
    """The response if 2xx; else a ServerError. 5xx, 408 and 429 are worth another try; 404
    too (the adapter may be gone from a restarted server, or the route off); other 4xx not."""
    if response.is_success:
        return response
    code = response.status_code
    retryable = code >= 500 or code in (404, 408, 429)
    raise ServerError(url, f"HTTP {code}: {error_text(response)}", code, retryable)


def transport_error(url: str, e: Exception) -> ServerError:
    kind = "timed out" if isinstance(e, httpx.TimeoutException) else "unreachable"
    return ServerError(url, f"{kind} ({type(e).__name__}: {mask_secrets(str(e))[:MESSAGE_LIMIT]})")


@dataclass(frozen=True)
class Choice:
    token_ids: list[int]
    logprobs: list[float] | None
    finish_reason: str


class ServerClient:
    """Control calls are synchronous (few, between sampling calls); completions are async, on
    the caller's httpx.AsyncClient, so many are in flight at once."""

    def __init__(self, url: str, headers: dict[str, str], timeout_s: float):
        self.url, self.headers, self.timeout_s = url, headers, timeout_s
        self._client: httpx.Client | None = None

    @property
    def client(self) -> httpx.Client:
        if self._client is None:  # one connection pool (and TLS context) for every control call
            self._client = httpx.Client(headers=self.headers, timeout=self.timeout_s)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _call(self, method: str, path: str, body: dict | None = None) -> httpx.Response:
        try:
            response = self.client.request(method, self.url + path, json=body)
        except httpx.HTTPError as e:
            raise transport_error(self.url, e) from None
        return checked(self.url, response)

    def models(self) -> list[dict]:
        """/v1/models: the base model and every LoRA adapter loaded (vLLM lists each with its path as `root`)."""
        data = self._call("GET", "/models").json().get("data")
        if not isinstance(data, list):
            raise ServerError(self.url, "GET /models answered without a 'data' list", retryable=False)
        return [m for m in data if isinstance(m, dict)]

    def model_ids(self) -> set[str]:
        return {str(m.get("id")) for m in self.models()}

    def load_lora(self, name: str, path: str, inplace: bool = False) -> None:
        """Load the adapter at `path` as `name`; `inplace` replaces what `name` serves (vLLM keys
        its prefix cache by name and path, so a new path never reuses the old weights' blocks)."""
        body = {"lora_name": name, "lora_path": path, **({"load_inplace": True} if inplace else {})}
        self._call("POST", "/load_lora_adapter", body)

    def unload_lora(self, name: str) -> None:
        self._call("POST", "/unload_lora_adapter", {"lora_name": name})

    async def complete(self, client: httpx.AsyncClient, body: dict) -> list[Choice]:
        """One completions request: `body["n"]` choices in index order, each with its token ids
        (vLLM's `return_tokens_as_token_ids` writes them as "token_id:<id>") and log-probs."""
        try:
            response = await client.post(self.url + "/completions", json=body, headers=self.headers)
        except httpx.HTTPError as e:
            raise transport_error(self.url, e) from None
        return self._choices(response, body)

    def complete_now(self, body: dict) -> list[Choice]:
        """As `complete`, on the control connection (the publication probe)."""
        try:
            response = self.client.post(self.url + "/completions", json=body)
        except httpx.HTTPError as e:
            raise transport_error(self.url, e) from None
        return self._choices(response, body)

    def _choices(self, response: httpx.Response, body: dict) -> list[Choice]:
        try:
            choices = sorted(checked(self.url, response).json()["choices"], key=lambda c: c["index"])
            parsed = [self._choice(c, body.get("logprobs") is not None) for c in choices]
        except (KeyError, TypeError, ValueError) as e:
            raise ServerError(self.url, f"a completion reply without its choices or tokens ({e!r:.200})") from None
        if len(parsed) != body["n"]:
            raise ServerError(self.url, f"asked for {body['n']} completions, got {len(parsed)}")
        return parsed

    def _choice(self, choice: dict, with_logprobs: bool) -> Choice:
        lp = choice.get("logprobs") or {}
        tokens = lp.get("tokens")
        if not isinstance(tokens, list) or not all(isinstance(t, str) and t.startswith("token_id:") for t in tokens):
            raise ServerError(
                self.url,
                "the reply has no token ids (logprobs.tokens as 'token_id:<id>'): the server must honour "
                "return_tokens_as_token_ids, as vLLM's OpenAI server does",
                retryable=False,
            )
        ids = [int(t.split(":", 1)[1]) for t in tokens]
        values = lp.get("token_logprobs") if with_logprobs else None
        logprobs = [float(v) for v in values] if values is not None else None
        if logprobs is not None and len(logprobs) != len(ids):
            raise ServerError(self.url, f"{len(ids)} token ids but {len(logprobs)} log-probs")
        return Choice(ids, logprobs, str(choice.get("finish_reason")))
