"""A judge behind any OpenAI-compatible chat endpoint: hosted GPT-style models, vLLM's
server, llama.cpp's server, Ollama.

Per sample: render the shared judge prompt, look the request up in the on-disk cache, else
call the endpoint (at most `concurrency` calls at once in this judge), retrying 408/409/429,
5xx, timeouts, dropped connections, replies over `max_reply_bytes`, requests past
`deadline_s` and HTTP 200 replies with nothing in them (an empty or whitespace body, no
choices, a null or empty message) with exponential backoff, jitter and the server's
Retry-After; then parse the reply. Transport faults are not verdicts: only a reply the judge
model wrote and that cannot be read is an unparseable judgment. A call that still fails, or
a reply that cannot be read, becomes a Judgment with `error` set and no verdict or score;
that text is masked (records.secrets) and cut short, since a server may echo the request's
Authorization header in it.

Credentials in `base_url` (`https://user:password@host:port/v1`, or a token-only
`https://TOKEN@host/v1`) are taken out of the URL the client uses and sent as headers: a lone
token is the bearer key (as an API key would be), user:password goes as HTTP Basic. Either
takes the place of `api_key_env`, which is then not read: a key from the environment is
never sent to a host whose URL names other credentials.

Budgets (judges/budget.py): `requests_per_minute` and `tokens_per_minute` are token buckets
per endpoint, shared by the judges of a process; the server's Retry-After and
`x-ratelimit-remaining-*`/`x-ratelimit-reset-*` pause every request to it; the requests in
flight halve on a 429 and creep back on success (up to `concurrency`). `limit_spending(usd)`
caps what the next judge step may cost (judging.max_cost_usd*): a request that could cost more
than is left is not sent, and its sample, with every later one, is an error judgment saying so.

`mode: group` (judges/group.py) sends one request per prompt with all its responses and reads
a judgment per response from it; the request's latency is split over the group's samples, its
tokens and cost are counted once (usage's `group_requests` and `group_samples` give the cost
per sample).

Token use, cost and request counts accumulate in `usage()`; the cycle reports them per
iteration.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import random
import re
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from alignloop.judges.budget import COST_CAP_ERROR, AdaptiveSlots, SpendingLimit, limits_for
from alignloop.judges.cache import JudgmentCache, cache_key, default_cache_path
from alignloop.judges.group import GroupOptions, group_schema, groups, parse_group, render_group
from alignloop.judges.prompting import (
    JUDGMENT_SCHEMA,
    Parsed,
    PromptOptions,
    Truncated,
    Unparseable,
    parse_judgment,
    render_messages,
)
from alignloop.judges.rubric import parse_rubric, rubric_schema
from alignloop.records import Judgment, Prompt, Sample
from alignloop.records.errors import ConfigError
from alignloop.records.secrets import env_secret, looks_like_a_key, mask_secrets, quote, register_secret

# Longest judgment error text kept: enough for the server's message, not for a whole echoed body.
ERROR_CHARS = 300


class OpenAIJudgeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["openai"] = "openai"
    name: str = Field("openai", description="Recorded as `judge` on every judgment.")
    base_url: str = Field(
        "https://api.openai.com/v1",
        description=(
            "The endpoint's base URL (http or https, ends in /v1). Credentials in it (https://TOKEN@host/v1: a "
            "bearer key; https://user:password@host/v1: HTTP Basic) take the place of api_key_env."
        ),
    )
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

    @field_validator("base_url")
    @classmethod
    def _an_http_url(cls, v: str) -> str:
        # Registered before anything can echo the URL: its credentials are masked from now on.
        register_url_credentials(v)
        why = url_problem(v)
        if why:
            # The "secret" kind keeps the config error from echoing the raw value: quote() shows it masked.
            raise PydanticCustomError(
                "secret",
                "{why}; give an http:// or https:// URL with a host, e.g. https://api.openai.com/v1 (got {value})",
                {"why": why, "value": quote(v)},
            )
        return v

    prompt: PromptOptions = Field(default_factory=PromptOptions, description="Judge prompt and reply parsing.")
    mode: Literal["sample", "group"] = Field(
        "sample",
        description=(
            "sample: one request per response; group: one per prompt with all its responses (the prompt sent "
            "once, scores side by side); judging.chunk_size must then be a multiple of sampler.samples_per_prompt."
        ),
    )
    group: GroupOptions = Field(default_factory=GroupOptions, description="The group prompt and rubric (mode: group).")

    @model_validator(mode="after")
    def _criteria_judge_one_response(self) -> OpenAIJudgeConfig:
        if self.mode == "group" and self.prompt.criteria:
            raise ValueError(
                "judge.prompt.criteria judge one response at a time; with mode: group, put the rubric in "
                "judge.group.rubric, or remove the criteria"
            )
        return self

    response_format: Literal["json_schema", "json_object", "text"] = Field(
        "json_schema",
        description="Structured output to ask for (text: servers without it; the reply is parsed tolerantly).",
    )
    temperature: float = Field(0.0, ge=0, description="Judge sampling temperature.")
    max_tokens: int = Field(512, gt=0, description="Longest judge reply, in tokens.")
    seed: int | None = Field(None, description="Sampling seed, for servers that honour it.")
    extra_body: dict = Field(default_factory=dict, description="Extra request fields passed through as-is.")
    concurrency: int = Field(
        16, gt=0, description="Requests in flight at once per judge actor (the most: 429s lower it for a while)."
    )
    adaptive_concurrency: bool = Field(
        True, description="Halve the requests in flight on a 429 and add them back one by one as requests succeed."
    )
    requests_per_minute: float | None = Field(
        None, gt=0, description="Most requests per minute to this endpoint and model, per process (None: no limit)."
    )
    tokens_per_minute: float | None = Field(
        None,
        gt=0,
        description=(
            "Most tokens per minute to this endpoint and model, per process: a request reserves its prompt "
            "(about 4 characters a token) plus max_tokens, corrected by the reply's usage (None: no limit)."
        ),
    )
    timeout_s: float = Field(
        60.0, gt=0, description="Per-request inactivity timeout: the longest wait for the connection or the next bytes."
    )
    deadline_s: float | None = Field(
        None,
        gt=0,
        description=(
            "Longest one request may take in all, however steadily the server trickles bytes; past it the "
            "request is a transport fault, retried (None: 4 x timeout_s)."
        ),
    )
    max_reply_bytes: int = Field(
        4 * 2**20,
        gt=0,
        description=(
            "Largest reply body read, decompressed; a bigger one is a transport fault, retried, and is never read "
            "whole (applies to the client built from base_url, not to an injected one)."
        ),
    )
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

        endpoint = Endpoint.of(self)  # reads the key's variable, unless the URL carries credentials
        url = endpoint.url.rstrip("/") + "/models"
        request = urllib.request.Request(url, method="GET", headers=endpoint.headers())
        try:
            urllib.request.urlopen(request, timeout=PREFLIGHT_TIMEOUT_S).close()
        except urllib.error.HTTPError:
            pass  # it answered (401, 404, ... are the server's to judge, per request)
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = mask_secrets(str(getattr(e, "reason", e)))[:ERROR_CHARS]
            raise ConfigError(
                f"judge {self.name!r}: cannot reach {mask_secrets(endpoint.url)} ({reason}) within "
                f"{PREFLIGHT_TIMEOUT_S:.0f} s; check judge.base_url and that the server is running"
            ) from None

    @property
    def request_deadline_s(self) -> float:
        return self.deadline_s if self.deadline_s is not None else 4 * self.timeout_s


PREFLIGHT_TIMEOUT_S = 5.0
# Longest pause an x-ratelimit-reset-* header can impose: long enough for a per-minute window or
# a token budget refilling over minutes, short enough that a wrong header does not stall a run.
MAX_HEADER_WAIT_S = 600.0


# the endpoint: a URL without credentials, and the headers that carry them --------------------
def url_problem(url: str) -> str | None:
    """Why `url` is no base URL a judge can call (None: it is one)."""
    if not url or any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        return "not a URL (empty, or it holds spaces or control characters)"
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    except ValueError as e:
        return f"not a URL ({e})"
    if parts.scheme.lower() not in ("http", "https"):
        return f"the scheme is {parts.scheme + '://' if parts.scheme else 'missing'}, not http:// or https://"
    if not parts.hostname:
        return "it names no host"
    return None


def split_credentials(url: str) -> tuple[str, str | None, str | None]:
    """(the URL without credentials, user or token, password), percent-decoded. A URL without
    credentials comes back unchanged, character for character."""
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url, None, None
    userinfo, _, host = parts.netloc.rpartition("@")
    user, sep, password = userinfo.partition(":")
    clean = parts._replace(netloc=host).geturl()
    return clean, urllib.parse.unquote(user), urllib.parse.unquote(password) if sep else None


def register_url_credentials(url: str) -> None:
    """Mask a URL's credentials literally, in every form they may be echoed: as written,
    decoded, and as the HTTP Basic value."""
    try:
        _, user, password = split_credentials(url)
    except ValueError:
        return  # not a URL: the validator says so, and quote() masks its userinfo by shape
    written = urllib.parse.urlsplit(url).netloc.rpartition("@")[0]
    if password is None:
        register_secret(user)
        register_secret(written)
    else:
        register_secret(password)
        register_secret(written.partition(":")[2])
        register_secret(_basic(user or "", password))


def _basic(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


@dataclass(frozen=True)
class Endpoint:
    """Where requests go and how they authenticate: a bearer key (from the URL's token or the
    key's variable), HTTP Basic credentials from the URL, or nothing."""

    url: str
    key: str | None = None
    basic: tuple[str, str] | None = None

    @classmethod
    def of(cls, config: OpenAIJudgeConfig) -> Endpoint:
        url, user, password = split_credentials(config.base_url)
        if password is not None:
            return cls(url, basic=(user or "", password))
        if user:
            return cls(url, key=user)
        return cls(url, key=env_secret(config.api_key_env) if config.api_key_env else None)

    def headers(self) -> dict[str, str]:
        if self.basic is not None:
            return {"Authorization": f"Basic {_basic(*self.basic)}"}
        return {"Authorization": f"Bearer {self.key}"} if self.key else {}


@dataclass
class Usage:
    requests: int = 0  # HTTP attempts, retries included
    retries: int = 0
    cache_hits: int = 0
    unparseable_retries: int = 0
    transport_faults: int = 0  # attempts that failed on the way (HTTP errors, timeouts, drops, empty 200s)
    empty_replies: int = 0  # of those, HTTP 200 replies with nothing the judge model wrote in them
    unparseable_replies: int = 0  # replies the judge model wrote that could not be read, final or asked again
    group_requests: int = 0  # mode group: groups sent (not from the cache), each one request and its retries
    group_samples: int = 0  # the samples those groups held: cost per sample = cost_usd / group_samples
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0


class CallFailed(Exception):
    """The request failed for good: not retryable, or out of retries."""


class OverBudget(CallFailed):
    """Not sent: it could cost more than the judge step has left to spend."""


class _Retry(Exception):
    """call_once backed off after a transport fault: call() tries again."""


class TransportFault(Exception):
    """A reply over max_reply_bytes or a request past its deadline: retried like a dropped
    connection, since a second attempt may well fare better."""


class EmptyReply(TransportFault):
    """An HTTP 200 holding nothing the judge model wrote (no choices, a null, empty or
    whitespace message): the server's fault, retried like a 5xx at any temperature. Read as a
    judgment it would be an unparseable one, and at temperature 0 never asked again."""


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
        self._endpoint = Endpoint.of(config) if client is None else None
        self._active = 0
        self._client: Any = None  # an openai.AsyncOpenAI or compatible, while a judge() call runs
        self._slots = AdaptiveSlots(config.concurrency, config.adaptive_concurrency)
        self.spending = SpendingLimit()
        self.limits = limits_for(
            split_credentials(config.base_url)[0], config.model, config.requests_per_minute, config.tokens_per_minute
        )
        self._rng = random.Random()
        self.cache = JudgmentCache(config.cache_path or default_cache_path()) if config.cache else None

    # the protocol -------------------------------------------------------------------------------
    async def judge(self, prompts: Sequence[Prompt], samples: Sequence[Sample]) -> list[Judgment]:
        """Concurrent calls (several chunks in one actor) share one client and one set of
        `concurrency` slots. Both are bound to the event loop, so they live while any call
        runs and are closed, on that loop, by the last call to finish."""
        pairs = list(zip(prompts, samples, strict=True))
        if self._active == 0:
            self._client = self._injected or _make_client(self.config, self._endpoint)
            self._slots.bind()
        self._active += 1
        try:
            if self.config.mode == "group":
                return await self.judge_groups(pairs)
            return list(await asyncio.gather(*(self.judge_one(p, s) for p, s in pairs)))
        finally:
            self._active -= 1
            if self._active == 0 and self._injected is None:
                await self._client.close()

    def usage(self) -> dict[str, float]:
        return asdict(self.counts)

    def limit_spending(self, usd: float | None) -> None:
        """What calls from now on may spend in all, in USD (None: no limit)."""
        self.spending.reset(usd, self.counts.cost_usd)

    # a group per prompt ----------------------------------------------------------------------
    async def judge_groups(self, pairs: list[tuple[Prompt, Sample]]) -> list[Judgment]:
        """One request per prompt's samples; the judgments come back in sample order."""
        samples = [s for _, s in pairs]
        index = groups(samples)
        parts = await asyncio.gather(*(self.judge_group(pairs[g[0]][0], [samples[i] for i in g]) for g in index))
        out: list[Judgment | None] = [None] * len(samples)
        for g, part in zip(index, parts):
            for i, j in zip(g, part):
                out[i] = j
        return [j for j in out if j is not None]

    async def judge_group(self, prompt: Prompt, samples: list[Sample]) -> list[Judgment]:
        """A judgment per sample from one request. A reply that cannot be read, or a request
        that fails, is an error for every sample; a response the reply leaves out or numbers
        twice is an error for that sample only. Each sample's judgment is cached on its own."""
        messages = render_group(self.config.group, self.config.prompt.system, prompt, samples)
        keys = [cache_key({**self.identity(messages), "response": n}) for n in range(1, len(samples) + 1)]
        hits = [self.cache.get(key) for key in keys] if self.cache is not None else []
        if hits and all(h is not None for h in hits):
            self.counts.cache_hits += len(hits)
            return [self.judgment(s, h, 0.0) for s, h in zip(samples, hits) if h is not None]
        k, score_range = len(samples), self.config.prompt.score_range
        await self._slots.acquire()
        try:
            start = time.perf_counter()
            self.counts.group_requests += 1
            self.counts.group_samples += k
            try:
                rank = self.config.group.rank
                items = await self.readable_reply(
                    messages,
                    lambda text: parse_group(text, k, score_range, rank),
                    group_schema(k, rank=rank),
                    "group_judgment",
                )
            except (CallFailed, Unparseable) as e:
                took = (time.perf_counter() - start) / k
                return [self.failed(s, e, took) for s in samples]
        finally:
            await self._slots.release()
        took = (time.perf_counter() - start) / k  # the group's one request, split over its samples
        out = []
        for s, item, key in zip(samples, items, keys):
            if isinstance(item, str):
                out.append(Judgment(sample_id=s.id, judge=self.name, latency_s=took, error=safe_text(item)))
                continue
            if self.cache is not None:
                self.cache.put(key, item)
            out.append(self.judgment(s, item, took))
        return out

    def failed(self, sample: Sample, e: Exception, latency: float) -> Judgment:
        """The error judgment of a call that failed or a reply that cannot be read."""
        kind = "unparseable judge reply: " if isinstance(e, Unparseable) else ""
        # CallFailed's text is made of masked, cut parts; a parser's may quote the reply.
        error = mask_secrets(str(e)) if isinstance(e, CallFailed) else safe_text(f"{kind}{e}")
        return Judgment(sample_id=sample.id, judge=self.name, latency_s=latency, error=error)

    # one sample -----------------------------------------------------------------------------
    async def judge_one(self, prompt: Prompt, sample: Sample) -> Judgment:
        messages = render_messages(self.config.prompt, prompt, sample)
        key = cache_key(self.identity(messages))
        if self.cache is not None and (hit := self.cache.get(key)) is not None:
            self.counts.cache_hits += 1
            return self.judgment(sample, hit, 0.0)
        await self._slots.acquire()
        try:
            start = time.perf_counter()
            try:
                parsed = await self.readable_reply(messages, *self.reads())
            except (CallFailed, Unparseable) as e:
                return self.failed(sample, e, time.perf_counter() - start)
        finally:
            await self._slots.release()
        if self.cache is not None:
            self.cache.put(key, parsed)
        return self.judgment(sample, parsed, time.perf_counter() - start)

    async def readable_reply(
        self, messages: list[dict], parse: Callable[[str], Any], schema: dict = JUDGMENT_SCHEMA, name: str = "judgment"
    ) -> Any:
        """The reply as `parse` reads it (asking for `schema` where structured output is on). An unreadable one is asked for again only when sampling can give a
        different answer (temperature > 0); a reply cut off at max_tokens is not, since the
        same limit would cut it again. The last failure is raised."""
        tries = 1 + (self.config.unparseable_retries if self.config.temperature > 0 else 0)
        for attempt in range(tries):
            try:
                return parse(await self.call(messages, schema, name))
            except Unparseable as e:
                self.counts.unparseable_replies += 1
                if attempt == tries - 1 or isinstance(e, Truncated):
                    raise
                self.counts.unparseable_retries += 1
        raise AssertionError("unreachable")

    def reads(self) -> tuple[Callable[[str], Parsed], dict, str]:
        """How a one-response reply is read, and the schema asked for: one verdict, or a rubric's."""
        options = self.config.prompt
        if options.criteria:
            return (
                lambda text: parse_rubric(text, options.criteria, options.score_range),
                rubric_schema(options.criteria),
                "rubric_judgment",
            )
        return lambda text: parse_judgment(text, options.score_range), JUDGMENT_SCHEMA, "judgment"

    def judgment(self, sample: Sample, parsed: Parsed, latency: float) -> Judgment:
        return parsed.judgment(sample, self.name, latency)

    def identity(self, messages: list[dict]) -> dict:
        """Everything that decides the answer; the messages already hold prompt and response."""
        c = self.config
        return {
            # Without credentials: a new password must not lose the cache, nor is one hashed into it.
            "base_url": split_credentials(c.base_url)[0],
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
    async def call(self, messages: list[dict], schema: dict = JUDGMENT_SCHEMA, name: str = "judgment") -> str:
        """The reply text, after as many retries as the config allows, each attempt within
        what is left to spend."""
        attempts = self.config.max_retries + 1
        for attempt in range(attempts):
            most = self.most_cost(messages)
            if not self.spending.reserve(most, self.counts.cost_usd):
                left = self.spending.left(self.counts.cost_usd) or 0.0
                raise OverBudget(
                    f"{COST_CAP_ERROR}: the request could cost up to ${most:.6f} and ${max(0.0, left):.6f} is left "
                    "of what this judge may spend in this judge step (judging.max_cost_usd, "
                    "judging.max_cost_usd_per_iteration); it was not sent"
                )
            try:
                return await self.call_once(messages, attempt, attempts, schema, name)
            except _Retry:
                continue
            finally:
                self.spending.release(most)
        raise AssertionError("unreachable")

    async def call_once(self, messages: list[dict], attempt: int, attempts: int, schema: dict, name: str) -> str:
        """One attempt: the reply text, or _Retry after the back-off, or the final failure."""
        reserved = self.estimate_tokens(messages)
        await self.limits.acquire(reserved)
        epoch = self._slots.epoch
        self.counts.requests += 1
        try:
            response = await self.attempt(messages, schema, name)
            # Billed even when the message is empty, so counted before it is read.
            self.account(getattr(response, "usage", None), reserved)
            text = reply_text(response, self.config.max_tokens)
            self._slots.succeeded()  # an answer, not an empty 200: the server keeps up
            return text
        except Unparseable:
            raise  # the judge model wrote it: a judgment that cannot be read, not a fault
        except Exception as e:  # noqa: BLE001 - classified below; anything unknown is final
            self.limits.observe(_headers(e), MAX_HEADER_WAIT_S)
            if getattr(e, "status_code", None) == 429:
                self._slots.throttled(epoch)
            if (asked := retry_after(e)) is not None:
                # The server's limit is the endpoint's, not this request's; capped as the headers are.
                self.limits.pause(min(asked, MAX_HEADER_WAIT_S))
            if not retryable(e):
                raise CallFailed(describe(e, self.config)) from None
            self.counts.transport_faults += 1
            self.counts.empty_replies += is_empty_reply(e)
            if attempt == attempts - 1:
                raise CallFailed(f"{describe(e, self.config)} (gave up after {attempts} attempts)") from None
            self.counts.retries += 1
            await asyncio.sleep(self.backoff(attempt, retry_after(e)))
            raise _Retry from None

    async def attempt(self, messages: list[dict], schema: dict = JUDGMENT_SCHEMA, name: str = "judgment"):
        """One request, within the total deadline: timeout_s bounds each wait for bytes, not
        the whole request, which a server trickling a byte at a time would hold for minutes.
        Its rate-limit headers are followed (a client without raw responses has none to give)."""
        deadline = self.config.request_deadline_s
        completions = self._client.chat.completions
        raw = getattr(completions, "with_raw_response", None)
        try:
            if raw is None:
                return await asyncio.wait_for(completions.create(**self.request(messages, schema, name)), deadline)
            reply = await asyncio.wait_for(raw.create(**self.request(messages, schema, name)), deadline)
        except TimeoutError:
            raise TransportFault(
                f"the request took longer than its deadline of {deadline:g} s in all (judge.deadline_s)"
            ) from None
        self.limits.observe(reply.headers, MAX_HEADER_WAIT_S)
        return reply.parse()

    def most_cost(self, messages: list[dict]) -> float:
        """The most a request can cost: no token is shorter than a byte, and the reply is at most
        max_tokens (a few tokens per message for the chat template)."""
        c = self.config
        prompt = sum(len(str(m.get("content") or "").encode()) + 8 for m in messages)
        return (prompt * c.price_input_per_mtok + c.max_tokens * c.price_output_per_mtok) / 1e6

    def estimate_tokens(self, messages: list[dict]) -> int:
        """What a request reserves of tokens_per_minute before its usage is known: its prompt at
        about 4 characters a token, and the longest reply (servers count max_tokens too)."""
        return sum(len(str(m.get("content") or "")) for m in messages) // 4 + self.config.max_tokens

    def request(self, messages: list[dict], schema: dict = JUDGMENT_SCHEMA, name: str = "judgment") -> dict:
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
                "json_schema": {"name": name, "strict": True, "schema": schema},
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

    def account(self, usage, reserved: int = 0) -> None:
        if usage is None:
            return
        p, c = usage.prompt_tokens or 0, usage.completion_tokens or 0
        self.limits.settle(reserved, p + c)
        self.counts.prompt_tokens += p
        self.counts.completion_tokens += c
        self.counts.cost_usd += (p * self.config.price_input_per_mtok + c * self.config.price_output_per_mtok) / 1e6


def _make_client(config: OpenAIJudgeConfig, endpoint: Endpoint | None):
    import httpx2
    from openai import AsyncOpenAI, DefaultAsyncHttpxClient
    from openai._constants import DEFAULT_CONNECTION_LIMITS

    assert endpoint is not None, "a judge without an injected client reads its endpoint at construction"
    # A client given a transport ignores the proxy variables; this one is told of them.
    inner = httpx2.AsyncHTTPTransport(limits=DEFAULT_CONNECTION_LIMITS, proxy=env_proxy(endpoint.url))
    http = DefaultAsyncHttpxClient(transport=capped_transport(inner, config.max_reply_bytes), timeout=config.timeout_s)
    # max_retries=0: retries happen in OpenAIJudge.call, where they are jittered and counted.
    # The openai client refuses an empty key even for servers that ignore it; HTTP Basic
    # replaces the bearer header it would send.
    return AsyncOpenAI(
        base_url=endpoint.url,
        api_key=endpoint.key or "unused",
        default_headers=endpoint.headers() if endpoint.basic else None,
        max_retries=0,
        timeout=config.timeout_s,
        http_client=http,
    )


def env_proxy(url: str) -> str | None:
    """The proxy the environment names for `url` (HTTPS_PROXY, HTTP_PROXY, ALL_PROXY, less
    NO_PROXY), as the openai client's own transport would have used."""
    import urllib.request

    parts = urllib.parse.urlsplit(url)
    if urllib.request.proxy_bypass(parts.hostname or ""):
        return None
    proxies = urllib.request.getproxies()
    return proxies.get(parts.scheme) or proxies.get("all")


def capped_transport(inner, cap: int):
    """`inner` (an httpx2 transport) whose replies stop at `cap` bytes, decoded: a declared
    Content-Length past it is refused unread, and a body growing past it (a gzip bomb
    included) is cut off as soon as it does. The error is a transport error, so the openai
    client reports it as a connection error, which is retried. The classes are made here
    because httpx2 comes with the openai client, imported only when a judge runs."""
    import httpx2

    class ReplyTooLarge(httpx2.ReadError):
        pass

    class CappedStream(httpx2.AsyncByteStream):
        def __init__(self, response):
            self.response = response

        async def __aiter__(self):
            read = 0
            async for chunk in self.response.aiter_bytes():
                read += len(chunk)
                if read > cap:
                    raise ReplyTooLarge(too_large(cap))
                yield chunk

        async def aclose(self) -> None:
            await self.response.aclose()

    class CappedTransport(httpx2.AsyncBaseTransport):
        async def handle_async_request(self, request):
            response = await inner.handle_async_request(request)
            declared = response.headers.get("content-length", "")
            if not response.headers.get("content-encoding") and declared.isdigit() and int(declared) > cap:
                await response.aclose()
                raise ReplyTooLarge(too_large(cap, int(declared)))
            # The body is handed on decoded, so these two no longer describe it.
            headers = [
                (k, v)
                for k, v in response.headers.multi_items()
                if k.lower() not in ("content-encoding", "content-length")
            ]
            return httpx2.Response(
                response.status_code, headers=headers, stream=CappedStream(response), extensions=response.extensions
            )

        async def aclose(self) -> None:
            await inner.aclose()

    return CappedTransport()


def too_large(cap: int, declared: int | None = None) -> str:
    said = f" (it declared {declared} bytes)" if declared is not None else ""
    return f"the reply is larger than judge.max_reply_bytes ({cap} bytes){said}; it was not read further"


def reply_text(response, max_tokens: int | None = None) -> str:
    """The judge model's reply. EmptyReply when the server sent none (a transport fault);
    Unparseable only for what the model wrote: a refusal, or a reply cut off at max_tokens."""
    choices = getattr(response, "choices", None)
    if not choices:
        raise EmptyReply("the HTTP 200 reply has no choices")
    if getattr(choices[0], "finish_reason", None) == "length":
        # Said as what it is, not as "no JSON object": the fix is the user's setting.
        raise Truncated(
            f"the judge's reply was cut off at max_tokens ({max_tokens}) before it ended; raise judge.max_tokens"
        )
    message = getattr(choices[0], "message", None)
    text = getattr(message, "content", None)
    if isinstance(text, str) and text.strip():
        return text
    if refusal := getattr(message, "refusal", None):
        raise Unparseable(f"the judge model refused: {refusal}")
    raise EmptyReply(f"the HTTP 200 reply's message is {'null' if text is None else 'empty'}")


def is_empty_reply(e: Exception) -> bool:
    """An HTTP 200 with nothing usable: no body at all (the client fails to decode it), or a
    completion without a message."""
    import json

    return isinstance(e, EmptyReply) or (isinstance(e, json.JSONDecodeError) and not str(e.doc).strip())


RETRYABLE_STATUS = {408, 409, 429}


def retryable(e: Exception) -> bool:
    import json

    import openai

    if isinstance(e, (openai.APIConnectionError, TransportFault)):  # includes APITimeoutError
        return True
    if isinstance(e, json.JSONDecodeError):  # the HTTP body itself was cut short: a transport fault
        return True
    if isinstance(e, openai.APIStatusError):
        return e.status_code in RETRYABLE_STATUS or e.status_code >= 500
    return False


def _headers(e: Exception):
    return getattr(getattr(e, "response", None), "headers", None)


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
    """The failure in one short line, masked: an HTTP error body is the server's text, and a
    server may echo the Authorization header back in it."""
    status = getattr(e, "status_code", None)
    said = str(e)
    cause = e.__cause__
    if cause is not None and str(cause) and str(cause) not in said:  # "Connection error." says little alone
        said += f" ({type(cause).__name__}: {cause})"
    text = f"{type(e).__name__}{f' (HTTP {status})' if status else ''}: {safe_text(said)}"
    if status == 400 and config.response_format != "text":
        text += " [if the server does not support structured output, set judge.response_format: text]"
    return text


def safe_text(text: str) -> str:
    """Masked first, then cut: a cut made first could leave part of a key the masks no longer match."""
    text = " ".join(mask_secrets(text).split())
    return text if len(text) <= ERROR_CHARS else text[:ERROR_CHARS] + "..."
