"""The sampler pool over OpenAI-compatible inference servers (`sampler.backend: server`): one
more SamplerPool, beside the actor replicas of loop/roles/samplers.py.

Publication writes each adapter version to `adapter_dir` (a filesystem the servers read),
loads it on every server under a name of its own (`<run>-v<N>-<checksum>`: vLLM keys its
prefix cache by adapter name, so new weights never reuse old blocks), verifies it (the server
lists it; a short probe's log-probs agree with the learner's within logprob_tolerance) and
unloads the versions before it. Sampling sends one completions request per prompt (k samples,
the prompt as token ids, a seed of its own, token ids and log-probs back), spread over the
servers with bounded concurrency; a request that fails is retried on another server, a
server that lost its adapters (restarted) is given the current one again, and when no server
is left the run stops as for a lost actor (exit 7, resumable), naming every failure."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from alignloop.loop.roles.protocols import ActorLost, Exported, SampleChunk
from alignloop.loop.serving import ServerOptions
from alignloop.policies.adapter import AdapterMismatch, AdapterPayload
from alignloop.policies.samplers.server import Choice, ServerClient, ServerError, bearer_headers
from alignloop.records import Prompt, Sample
from alignloop.records.errors import ConfigError

# The probe a published adapter must answer: a short, fixed chat, its tokens compared with the
# learner's log-probs of the same tokens.
PROBE = [{"role": "user", "content": "Name three colours."}]
PROBE_TOKENS = 8

# (messages, token ids) -> the learner's log-prob of each token, at the sampling temperature.
Reference = Callable[[list[dict], list[int]], list[float]]


class ServerSamplers:
    """SamplerPool over inference servers. `render` turns a chat into prompt token ids, `decode`
    token ids into text (the model's tokenizer); `reference`, when given, is the learner's
    log-probs of the probe at the version being published (None: the probe is only checked to
    answer with token ids and log-probs; the learner's per-iteration old_logprob_gap remains)."""

    handles: list = []  # no actors: the servers run elsewhere

    def __init__(
        self,
        opts: ServerOptions,
        sampler_cfg,
        run_name: str,
        adapter_dir: str | Path,
        render: Callable[[list], list[int]],
        decode: Callable[[list[int]], str],
        stop_ids: list[int],
        reference: Reference | None = None,
        request_logprobs: bool = True,
    ):
        self.opts, self.cfg, self.run_name = opts, sampler_cfg, run_name
        self.adapter_dir = Path(adapter_dir)
        self.render, self.decode, self.stop_ids = render, decode, set(stop_ids)
        self.reference = reference
        self.request_logprobs = request_logprobs
        headers = bearer_headers(opts.api_key_env)
        self.servers = [ServerClient(url, headers, opts.timeout_s) for url in opts.urls]
        self.live = list(range(len(self.servers)))
        self.adapter: Exported | None = None
        self.name: str | None = None  # the served adapter's name on every live server
        self.loaded: dict[int, set[str]] = {k: set() for k in range(len(self.servers))}
        self.failures: list[str] = []  # every failure, named: "<url>: <what>"
        self.probe_gaps: dict[str, float] = {}  # "<url> <name>" -> the probe's mean gap to the learner
        self.strikes = [0] * len(self.servers)  # failed requests in a row, per server
        self._lock = threading.Lock()  # reloads on one server at a time

    # publication ---------------------------------------------------------------------------
    def adapter_name(self, payload: AdapterPayload) -> str:
        return f"{self.run_name}-v{payload.version}-{payload.checksum[:12]}"

    def publish(self, adapter: Exported) -> float:
        """Every server that answers loads the adapter and passes the probe, then older versions
        are unloaded; publishing what is served already costs nothing."""
        payload = adapter.payload
        if self.adapter is not None and self.name == self.adapter_name(payload):
            return 0.0
        start = time.perf_counter()
        payload.verify()
        name = self.adapter_name(payload)
        path = payload.write(self.adapter_dir / name)
        self.live = list(range(len(self.servers)))  # a server that was down gets its chance again
        for k in list(self.live):
            try:
                self._load(k, name, path)
            except ServerError as e:
                self._drop(k, e)
        if not self.live:  # a path the servers cannot read fails on every one of them
            raise self._fleet_lost(
                f"publishing adapter v{payload.version} from {path} (the servers must read it there)"
            )
        previous = self.name
        self.adapter, self.name = adapter, name
        for k in self.live:
            self._unload_older(k)
        if previous and previous != name:
            _remove_written(self.adapter_dir / previous, payload.files())
        return time.perf_counter() - start

    def _load(self, k: int, name: str, path: Path) -> None:
        server = self.servers[k]
        if name not in server.model_ids():
            server.load_lora(name, str(path))
        listed = server.model_ids()
        if name not in listed:
            raise AdapterMismatch(f"{server.url} accepted adapter {name} but does not list it in /models")
        self.loaded[k].add(name)
        self._probe(k, name)

    def _probe(self, k: int, name: str) -> None:
        """A short seeded completion under `name`: it must come back with token ids and
        log-probs, and those must match the learner's within logprob_tolerance."""
        body = self._body(name, self.render(PROBE), n=1, seed=0)
        body["max_tokens"] = min(PROBE_TOKENS, self.cfg.max_new_tokens)
        (choice,) = self.servers[k].complete_now(body)
        if self.reference is None or not choice.logprobs or not choice.token_ids:
            return
        mine = self.reference(PROBE, choice.token_ids)
        gap = sum(abs(a - b) for a, b in zip(choice.logprobs, mine)) / len(mine)
        self.probe_gaps[f"{self.servers[k].url} {name}"] = gap
        if not gap <= self.opts.logprob_tolerance:  # NaN fails too
            raise AdapterMismatch(
                f"{self.servers[k].url} serves adapter {name}, but its probe log-probs differ from the learner's by "
                f"{gap:.4f} per token (sampler.server.logprob_tolerance {self.opts.logprob_tolerance}): another model, "
                "another adapter at that path, or (temperature != 1) a server without --logprobs-mode "
                "processed_logprobs; refusing to sample from it"
            )

    def _unload_older(self, k: int) -> None:
        """Sampling only ever uses the published adapter (publish and generate take turns on
        one thread), so every older name this pool loaded goes."""
        for old in sorted(self.loaded[k] - {self.name}):
            try:
                self.servers[k].unload_lora(old)
            except ServerError as e:
                if e.status != 404:  # already gone (a restarted server) is what we wanted
                    self.failures.append(f"unloading {old}: {e}")
            self.loaded[k].discard(old)

    def _reload(self, k: int) -> bool:
        """Server k failed a request: it serves the current adapter again (it restarted and lost
        its adapters) and True, or False when it does not answer."""
        assert self.adapter is not None and self.name is not None
        with self._lock:
            try:
                if self.name not in self.servers[k].model_ids():
                    print(f"{self.servers[k].url} lost adapter {self.name} (restarted?); loading it again", flush=True)
                    self.loaded[k].discard(self.name)
                    self._load(k, self.name, self.adapter_dir / self.name)
                return True
            except (ServerError, AdapterMismatch) as e:
                self.failures.append(str(e))
                return False

    def _drop(self, k: int, error: Exception) -> None:
        self.failures.append(str(error))
        if k in self.live:
            self.live.remove(k)
            print(f"inference server {self.servers[k].url} is out of this call ({error})", flush=True)

    def _fleet_lost(self, doing: str) -> ActorLost:
        named = "; ".join(self.failures[-2 * len(self.servers) :])
        return ActorLost(
            f"every inference server failed while {doing} ({named}); every finished step is saved: "
            "run the same command with --resume once the servers answer"
        )

    # sampling ------------------------------------------------------------------------------
    def generate(
        self, chunks: list[SampleChunk], on_done: Callable[[int, list[Sample]], None] = lambda i, part: None
    ) -> list[list[Sample]]:
        """Every chunk's samples, in chunk order; `on_done(i, samples)` as each finishes."""
        if self.adapter is None or self.name is None:
            raise AdapterMismatch("nothing is published to the servers yet; refusing to sample")
        self.live = [k for k in range(len(self.servers)) if self._reload(k)]  # restarted ones get it back
        self.strikes = [0] * len(self.servers)
        if not self.live:
            raise self._fleet_lost("sampling")
        return asyncio.run(self._generate(chunks, on_done))

    async def _generate(self, chunks: list[SampleChunk], on_done) -> list[list[Sample]]:
        gates = {k: asyncio.Semaphore(self.opts.concurrency) for k in range(len(self.servers))}
        results: list = [None] * len(chunks)
        async with httpx.AsyncClient(timeout=self.opts.timeout_s) as client:

            async def chunk(i: int, c: SampleChunk) -> None:
                k = c.n or self.cfg.samples_per_prompt
                # Prompt p gets seed + p*k, as the in-actor vLLM sampler seeds it.
                calls = [
                    self._request(client, gates, i + p, self._prompt_body(pr, k, c.seed + p * k))
                    for p, pr in enumerate(c.prompts)
                ]
                answers = await asyncio.gather(*calls)
                results[i] = [
                    self._sample(pr, c.step, j, choice)
                    for pr, choices in zip(c.prompts, answers)
                    for j, choice in enumerate(choices)
                ]
                on_done(i, results[i])

            await asyncio.gather(*(chunk(i, c) for i, c in enumerate(chunks)))
        return results

    async def _request(self, client: httpx.AsyncClient, gates: dict, first: int, body: dict) -> list[Choice]:
        """One prompt's request: tried on the live servers in turn (starting at `first`), up to
        `attempts` times; a server that fails is checked, reloaded if it lost its adapter, and
        left out while it does not answer."""
        errors: list[str] = []
        for attempt in range(self.opts.attempts):
            if not self.live:
                break
            k = self.live[(first + attempt) % len(self.live)]
            try:
                async with gates[k]:
                    choices = await self.servers[k].complete(client, {**body, "model": self.name})
                self.strikes[k] = 0
                return choices
            except ServerError as e:
                errors.append(str(e))
                self.failures.append(str(e))
                if not e.retryable:
                    raise RuntimeError(f"inference server {e}") from None
                # A 404 is explained by the reload (a restarted server); other failures count.
                self.strikes[k] += e.status != 404
                # Out while it does not answer, or while it answers but fails request after request.
                if self.strikes[k] >= self.opts.attempts or not await asyncio.to_thread(self._reload, k):
                    self._drop(k, e)
        raise ActorLost(
            f"a sampling request failed {len(errors)} time(s) ({'; '.join(errors)}); "
            f"{len(self.live)} of {len(self.servers)} server(s) answering; every finished step is saved: "
            "run the same command with --resume once the servers answer"
        )

    def _prompt_body(self, prompt: Prompt, k: int, seed: int) -> dict:
        return self._body(self.name or "", self.render(prompt.messages), n=k, seed=seed)

    def _body(self, name: str, prompt_ids: list[int], n: int, seed: int) -> dict:
        body = {
            "model": name,
            "prompt": prompt_ids,  # token ids: the server samples after exactly these
            "n": n,
            "seed": seed,
            "temperature": self.cfg.temperature,
            "top_p": self.cfg.top_p,
            "max_tokens": self.cfg.max_new_tokens,
            "stop_token_ids": sorted(self.stop_ids),
            "return_tokens_as_token_ids": True,
            "skip_special_tokens": False,
            # 0 alternatives: the sampled token's own log-prob only. Tokens come back with it,
            # so the field is sent even when log-probs are not wanted, and their values dropped.
            "logprobs": 0,
        }
        if self.cfg.min_new_tokens:  # vLLM's and SGLang's OpenAI servers read min_tokens
            body["min_tokens"] = self.cfg.min_new_tokens
        return body

    def _sample(self, prompt: Prompt, step: int, j: int, choice: Choice) -> Sample:
        finish = {"stop": "stop", "length": "length"}.get(choice.finish_reason)
        if finish is None:
            raise RuntimeError(f"an inference server ended a response with finish_reason={choice.finish_reason!r}")
        ids = choice.token_ids
        stopped_on_token = finish == "stop" and bool(ids) and ids[-1] in self.stop_ids
        lps = choice.logprobs if self.request_logprobs else None
        if lps is not None and not all(math.isfinite(x) for x in lps):
            lps = None  # the learner recomputes what the server could not give
        return Sample(
            id=f"{prompt.id}@{step}#{j}",
            prompt_id=prompt.id,
            response=self.decode(ids[:-1] if stopped_on_token else ids).strip(),
            policy_version=self.adapter.payload.version if self.adapter else 0,
            token_ids=ids,
            logprobs=lps,
            finish_reason=finish,
        )

    def close(self) -> None:
        """Unload this run's adapter from the servers (they serve others too) and its files."""
        for k in range(len(self.servers)):
            for name in sorted(self.loaded[k]):
                try:
                    self.servers[k].unload_lora(name)
                except ServerError:
                    pass  # a server that is gone holds nothing
            self.loaded[k].clear()
            self.servers[k].close()
        if self.name and self.adapter is not None:
            _remove_written(self.adapter_dir / self.name, self.adapter.payload.files())


def _remove_written(path: Path, files) -> None:
    """Remove the adapter files publication wrote to `path`, and `path` if that empties it:
    adapter_dir is the user's (a shared filesystem), so nothing else there is touched."""
    for name in files:
        (path / name).unlink(missing_ok=True)
    try:
        path.rmdir()
    except OSError:
        pass  # gone already, or holding files alignloop did not write


def _remove_dir(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


# start-up checks -----------------------------------------------------------------------------
def check_servers(opts: ServerOptions, lora_rank: int, model: str) -> None:
    """Before Ray starts: every server answers /models, has LoRA enabled, allows runtime
    loading and takes an adapter of rank `lora_rank`; else a ConfigError (exit 2) naming the
    server and the flag to set. The load call is made with a config-only adapter directory:
    vLLM reads and checks adapter_config.json (rank included) before the weights it lacks. It
    goes to a temporary directory (in adapter_dir when set): nothing is written to the run's."""
    import json
    import tempfile

    headers = bearer_headers(opts.api_key_env)
    if opts.adapter_dir:
        Path(opts.adapter_dir).mkdir(parents=True, exist_ok=True)
    probe = Path(tempfile.mkdtemp(prefix="alignloop-startup-check-", dir=opts.adapter_dir))
    probe.chmod(0o755)  # the server may run as another user
    (probe / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "r": lora_rank, "lora_alpha": lora_rank, "target_modules": ["q_proj"]})
    )
    try:
        for url in opts.urls:
            check_server(ServerClient(url, headers, min(opts.timeout_s, 30)), lora_rank, str(probe), model)
    finally:
        _remove_dir(probe)


def check_server(server: ServerClient, lora_rank: int, probe: str, model: str) -> None:
    start = (
        f"vllm serve {model} --enable-lora --max-lora-rank {max(lora_rank, 16)} with "
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING=1 in its environment"
    )
    try:
        server.models()
    except ServerError as e:
        if e.status in (401, 403):
            raise ConfigError(
                f"inference server {e}: set sampler.server.api_key_env to the variable holding its key"
            ) from None
        raise ConfigError(f"inference server {e}; start it ({start}) or fix sampler.server.urls") from None
    name = "alignloop-startup-check"
    try:
        server.load_lora(name, probe)
    except ServerError as e:
        said = e.what.lower()
        if e.status == 404 and "not found" in said and "adapter" not in said:
            raise ConfigError(
                f"inference server {server.url} does not allow loading LoRA adapters at run time "
                f"(POST /load_lora_adapter: {e.what}); restart it with VLLM_ALLOW_RUNTIME_LORA_UPDATING=1"
            ) from None
        if "not enabled" in said or "enable-lora" in said or "enable_lora" in said:
            raise ConfigError(
                f"inference server {server.url} has LoRA off ({e.what}); restart it with --enable-lora"
            ) from None
        if "max_lora_rank" in said or "max-lora-rank" in said:
            raise ConfigError(
                f"inference server {server.url} refuses an adapter of rank {lora_rank} ({e.what}); restart it "
                f"with --max-lora-rank {lora_rank} or more, or lower model.lora.r"
            ) from None
        return  # refused for the missing weights, after the checks above passed: loading works
    server.unload_lora(name)  # a server that loaded a config-only adapter: nothing more to learn


# built from a run config ----------------------------------------------------------------------
def server_samplers(cfg, logprobs_of: Callable[[list], list[list[float]]] | None = None) -> ServerSamplers:
    """The pool for `cfg` (sampler.backend: server), with the model's tokenizer on the driver.
    `logprobs_of`: the learner's sequence_logprobs(examples), the probe's reference; None where
    the learner may be training while a version is published (sampling ahead, several ranks)."""
    from alignloop.policies.model import load_tokenizer, render_prompt, resolve_model_path
    from alignloop.policies.vllm_engine import logprobs_mode, stop_ids

    path = resolve_model_path(cfg.model.path)
    tokenizer = load_tokenizer(path)
    opts = cfg.sampler.server
    return ServerSamplers(
        opts,
        cfg.sampler,
        cfg.name,
        opts.adapter_dir or cfg.resolved_run_dir / "server-adapters",
        lambda messages: render_prompt(tokenizer, messages),
        lambda ids: tokenizer.decode(ids, skip_special_tokens=True),
        stop_ids(path, tokenizer),
        learner_reference(logprobs_of) if logprobs_of else None,
        # The server's log-probs are what the learner computes only where vLLM's logprobs mode can
        # give them (start it with --logprobs-mode processed_logprobs; see logprobs_mode()).
        request_logprobs=logprobs_mode(cfg.sampler.temperature, cfg.sampler.top_p) is not None,
    )


def learner_reference(logprobs_of: Callable[[list], list[list[float]]]) -> Reference:
    """The probe's tokens as a one-row batch for the learner's sequence_logprobs."""
    from alignloop.policies.objectives.base import Example
    from alignloop.records import Judgment

    def reference(messages: list[dict], ids: list[int]) -> list[float]:
        prompt = Prompt(id="probe", messages=messages)
        sample = Sample(id="probe@0#0", prompt_id="probe", response="", policy_version=0, token_ids=ids)
        return logprobs_of([Example(prompt, sample, Judgment(sample_id=sample.id, judge="probe"))])[0]

    return reference
