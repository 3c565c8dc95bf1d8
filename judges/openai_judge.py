"""A judge behind any OpenAI-compatible chat endpoint: hosted GPT-style models, vLLM's
server, llama.cpp's server, Ollama.

Per sample: render the shared judge prompt, look the request up in the on-disk cache, else
call the endpoint (at most `concurrency` calls at once in this judge), retrying 408/409/429,
5xx, timeouts and dropped connections with exponential backoff, jitter and the server's
Retry-After; then parse the reply. A call that still fails, or a reply that cannot be read,
becomes a Judgment with `error` set and no verdict or score.

Token use, cost and request counts accumulate in `usage()`; the cycle reports them per
iteration.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from alignloop.judges.cache import JudgmentCache, cache_key, default_cache_path
from alignloop.judges.prompting import (
    JUDGMENT_SCHEMA,
    Parsed,
    PromptOptions,
    Truncated,
    Unparseable,
    parse_judgment,
    render_messages,
)
from alignloop.records import Judgment, Prompt, Sample
from alignloop.records.errors import ConfigError
from alignloop.records.secrets import env_secret, looks_like_a_key, mask_secrets


class OpenAIJudgeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["openai"] = "openai"
    name: str = Field("openai", description="Recorded as `judge` on every judgment.")
    base_url: str = Field("https://api.openai.com/v1", description="The endpoint's base URL (ends in /v1).")
    model: str = Field(description="Model name the endpoint serves, e.g. gpt-4o-mini.")
    api_key_env: str | None = Field(
        "OPENAI_API_KEY", description="Environment variable holding the API key (None: the server needs no key)."
    )

    @field_validator("api_key_env")
    @classmethod
    def _a_name_not_a_key(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if looks_like_a_key(v):
            raise PydanticCustomError(
                "secret",
                (
                    "this looks like an API key, but api_key_env takes the *name* of the environment variable "
                    "that holds it; run `export OPENAI_API_KEY=<your key>` and set api_key_env: OPENAI_API_KEY "
                    "(the value was not printed or saved)"
                ),
            )
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", v):
            raise PydanticCustomError(
                "secret",
                (
                    "api_key_env must be an environment variable name (letters, digits and '_', not starting "
                    "with a digit), e.g. OPENAI_API_KEY"
                ),
            )
        return v

    prompt: PromptOptions = Field(default_factory=PromptOptions, description="Judge prompt and reply parsing.")
    response_format: Literal["json_schema", "json_object", "text"] = Field(
        "json_schema",
        description="Structured output to ask for (text: servers without it; the reply is parsed tolerantly).",
    )
    temperature: float = Field(0.0, ge=0, description="Judge sampling temperature.")
    max_tokens: int = Field(512, gt=0, description="Longest judge reply, in tokens.")
    seed: int | None = Field(None, description="Sampling seed, for servers that honour it.")
    extra_body: dict = Field(default_factory=dict, description="Extra request fields passed through as-is.")
    concurrency: int = Field(16, gt=0, description="Requests in flight at once per judge actor.")
    timeout_s: float = Field(60.0, gt=0, description="Per-request timeout.")
    max_retries: int = Field(5, ge=0, description="Retries of a failed request before it is recorded as an error.")
    unparseable_retries: int = Field(
        1,
        ge=0,
        description="Ask again when a reply cannot be read, at temperature > 0 only (at 0 it would repeat itself).",
    )
    backoff_base_s: float = Field(1.0, gt=0, description="First retry waits about this long; doubling after.")
    backoff_max_s: float = Field(
        60.0, gt=0, description="Cap of the exponential backoff (a server's Retry-After is always honoured)."
    )
    price_input_per_mtok: float = Field(0.0, ge=0, description="USD per 1M prompt tokens, for cost metrics.")
    price_output_per_mtok: float = Field(0.0, ge=0, description="USD per 1M completion tokens, for cost metrics.")
    cache: bool = Field(True, description="Reuse earlier successful judgments of the same request from disk.")
    cache_path: str | None = Field(
        None, description="Cache file (None: $ALIGNLOOP_CACHE or ~/.cache/alignloop, judge-cache/judgments.sqlite)."
    )

    def preflight(self) -> None:
        """Before anything is sampled: the key's variable is set and the endpoint answers."""
        import urllib.error
        import urllib.request

        if self.api_key_env:
            env_secret(self.api_key_env)
        url = self.base_url.rstrip("/") + "/models"
        try:
            urllib.request.urlopen(urllib.request.Request(url, method="GET"), timeout=PREFLIGHT_TIMEOUT_S).close()
        except urllib.error.HTTPError:
            pass  # it answered (401, 404, ... are the server's to judge, per request)
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise ConfigError(
                f"judge {self.name!r}: cannot reach {mask_secrets(self.base_url)} ({reason}) within "
                f"{PREFLIGHT_TIMEOUT_S:.0f} s; check judge.base_url and that the server is running"
            ) from None


PREFLIGHT_TIMEOUT_S = 5.0


@dataclass
class Usage:
    requests: int = 0  # HTTP attempts, retries included
    retries: int = 0
    cache_hits: int = 0
    unparseable_retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0


class CallFailed(Exception):
    """The request failed for good: not retryable, or out of retries."""


class OpenAIJudge:
    def __init__(self, config: OpenAIJudgeConfig, client=None):
        """`client`: an openai.AsyncOpenAI (or compatible) to use instead of building one from
        base_url and api_key_env; tests point it at a local server. Give it max_retries=0:
        retrying is this class's job."""
        self.config = config
        self.name = config.name
        self.counts = Usage()
        self._injected = client
        # Read now, so a missing key stops the judge at start-up rather than failing every call.
        self._api_key = _api_key(config.api_key_env) if client is None else None
        self._active = 0
        self._client: Any = None  # an openai.AsyncOpenAI or compatible, while a judge() call runs
        self._slots: asyncio.Semaphore | None = None
        self._rng = random.Random()
        self.cache = JudgmentCache(config.cache_path or default_cache_path()) if config.cache else None

    # the protocol -------------------------------------------------------------------------------
    async def judge(self, prompts: Sequence[Prompt], samples: Sequence[Sample]) -> list[Judgment]:
        """Concurrent calls (several chunks in one actor) share one client and one set of
        `concurrency` slots. Both are bound to the event loop, so they live while any call
        runs and are closed, on that loop, by the last call to finish."""
        pairs = list(zip(prompts, samples, strict=True))
        if self._active == 0:
            self._client = self._injected or _make_client(self.config, self._api_key)
            self._slots = asyncio.Semaphore(self.config.concurrency)
        self._active += 1
        try:
            return list(await asyncio.gather(*(self.judge_one(p, s) for p, s in pairs)))
        finally:
            self._active -= 1
            if self._active == 0 and self._injected is None:
                await self._client.close()

    def usage(self) -> dict[str, float]:
        return asdict(self.counts)

    # one sample -----------------------------------------------------------------------------
    async def judge_one(self, prompt: Prompt, sample: Sample) -> Judgment:
        messages = render_messages(self.config.prompt, prompt, sample)
        key = cache_key(self.identity(messages))
        if self.cache is not None and (hit := self.cache.get(key)) is not None:
            self.counts.cache_hits += 1
            return self.judgment(sample, hit, 0.0)
        assert self._slots is not None, "judge_one runs inside judge(), which sets the slots"
        async with self._slots:
            start = time.perf_counter()
            try:
                parsed = await self.readable_reply(messages)
            except (CallFailed, Unparseable) as e:
                kind = "unparseable judge reply: " if isinstance(e, Unparseable) else ""
                return Judgment(
                    sample_id=sample.id, judge=self.name, latency_s=time.perf_counter() - start, error=f"{kind}{e}"
                )
        if self.cache is not None:
            self.cache.put(key, parsed)
        return self.judgment(sample, parsed, time.perf_counter() - start)

    async def readable_reply(self, messages: list[dict]) -> Parsed:
        """The parsed reply. An unreadable one is asked for again only when sampling can give a
        different answer (temperature > 0); a reply cut off at max_tokens is not, since the
        same limit would cut it again. The last failure is raised."""
        tries = 1 + (self.config.unparseable_retries if self.config.temperature > 0 else 0)
        for attempt in range(tries):
            try:
                return parse_judgment(await self.call(messages), self.config.prompt.score_range)
            except Unparseable as e:
                if attempt == tries - 1 or isinstance(e, Truncated):
                    raise
                self.counts.unparseable_retries += 1
        raise AssertionError("unreachable")

    def judgment(self, sample: Sample, parsed: Parsed, latency: float) -> Judgment:
        return parsed.judgment(sample, self.name, latency)

    def identity(self, messages: list[dict]) -> dict:
        """Everything that decides the answer; the messages already hold prompt and response."""
        c = self.config
        return {
            "base_url": c.base_url,
            "model": c.model,
            "messages": messages,
            "format": c.response_format,
            "temperature": c.temperature,
            "max_tokens": c.max_tokens,
            "seed": c.seed,
            "extra_body": c.extra_body,
            "score_range": list(c.prompt.score_range),
        }

    # the request ----------------------------------------------------------------------------------
    async def call(self, messages: list[dict]) -> str:
        """The reply text, after as many retries as the config allows."""
        attempts = self.config.max_retries + 1
        for attempt in range(attempts):
            self.counts.requests += 1
            try:
                response = await self._client.chat.completions.create(**self.request(messages))
            except Exception as e:  # noqa: BLE001 - classified below; anything unknown is final
                if not retryable(e):
                    raise CallFailed(describe(e, self.config)) from None
                if attempt == attempts - 1:
                    raise CallFailed(f"{describe(e, self.config)} (gave up after {attempts} attempts)") from None
                self.counts.retries += 1
                await asyncio.sleep(self.backoff(attempt, retry_after(e)))
                continue
            self.account(getattr(response, "usage", None))
            return reply_text(response, self.config.max_tokens)
        raise AssertionError("unreachable")

    def request(self, messages: list[dict]) -> dict:
        c = self.config
        kwargs = {
            "model": c.model,
            "messages": messages,
            "temperature": c.temperature,
            "max_tokens": c.max_tokens,
            "timeout": c.timeout_s,
        }
        if c.seed is not None:
            kwargs["seed"] = c.seed
        if c.response_format == "json_schema":
            kwargs["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "judgment", "strict": True, "schema": JUDGMENT_SCHEMA},
            }
        elif c.response_format == "json_object":
            kwargs["response_format"] = {"type": "json_object"}
        if c.extra_body:
            kwargs["extra_body"] = c.extra_body
        return kwargs

    def backoff(self, attempt: int, server_asks: float | None) -> float:
        """Exponential up to backoff_max_s, with equal jitter (half fixed, half random, so
        actors that failed together do not retry together); never sooner than the server's
        Retry-After, which knows better than our guess."""
        c = self.config
        step = min(c.backoff_max_s, c.backoff_base_s * 2**attempt)
        wait = step / 2 + self._rng.uniform(0, step / 2)
        return max(wait, server_asks or 0.0)

    def account(self, usage) -> None:
        if usage is None:
            return
        p, c = usage.prompt_tokens or 0, usage.completion_tokens or 0
        self.counts.prompt_tokens += p
        self.counts.completion_tokens += c
        self.counts.cost_usd += (p * self.config.price_input_per_mtok + c * self.config.price_output_per_mtok) / 1e6


def _api_key(env_var: str | None) -> str:
    # The openai client refuses an empty key even for servers that ignore it.
    return env_secret(env_var) if env_var else "unused"


def _make_client(config: OpenAIJudgeConfig, api_key: str | None):
    from openai import AsyncOpenAI

    # max_retries=0: retries happen in OpenAIJudge.call, where they are jittered and counted.
    return AsyncOpenAI(base_url=config.base_url, api_key=api_key, max_retries=0, timeout=config.timeout_s)


def reply_text(response, max_tokens: int | None = None) -> str:
    choices = getattr(response, "choices", None)
    if not choices:
        raise Unparseable("the response has no choices")
    if getattr(choices[0], "finish_reason", None) == "length":
        # Said as what it is, not as "no JSON object": the fix is the user's setting.
        raise Truncated(
            f"the judge's reply was cut off at max_tokens ({max_tokens}) before it ended; raise judge.max_tokens"
        )
    text = choices[0].message.content
    if not text:
        refusal = getattr(choices[0].message, "refusal", None)
        raise Unparseable(f"empty reply{f' (refusal: {refusal})' if refusal else ''}")
    return text


RETRYABLE_STATUS = {408, 409, 429}


def retryable(e: Exception) -> bool:
    import json

    import openai

    if isinstance(e, openai.APIConnectionError):  # includes APITimeoutError
        return True
    if isinstance(e, json.JSONDecodeError):  # the HTTP body itself was cut short: a transport fault
        return True
    if isinstance(e, openai.APIStatusError):
        return e.status_code in RETRYABLE_STATUS or e.status_code >= 500
    return False


def retry_after(e: Exception) -> float | None:
    """Seconds the server asked us to wait: retry-after-ms (OpenAI), else Retry-After as
    seconds or as an HTTP date."""
    response = getattr(e, "response", None)
    headers = getattr(response, "headers", None) or {}
    try:
        if (ms := headers.get("retry-after-ms")) is not None:
            return max(0.0, float(ms) / 1000)
        if (value := headers.get("retry-after")) is None:
            return None
        try:
            return max(0.0, float(value))
        except ValueError:
            when = email.utils.parsedate_to_datetime(value)
            return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def describe(e: Exception, config: OpenAIJudgeConfig) -> str:
    status = getattr(e, "status_code", None)
    text = f"{type(e).__name__}{f' (HTTP {status})' if status else ''}: {' '.join(str(e).split())[:300]}"
    if status == 400 and config.response_format != "text":
        text += " [if the server does not support structured output, set judge.response_format: text]"
    return text
