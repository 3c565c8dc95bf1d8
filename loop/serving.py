"""Config for inference servers: `sampler.server` (OpenAI-compatible servers that sample for
the run, docs/inference-servers.md) and `round.serve` (endpoints where a promoted adapter is
served). Pydantic only, so the config loads without torch, Ray or httpx."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from alignloop.records.secrets import quote


def _base_url(value: str) -> str:
    """An http(s) base URL with a host; a bare host:port gets the OpenAI API's /v1."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{quote(value)} is not an http(s) URL with a host; write e.g. http://gpu-1:8000/v1")
    if parts.username or parts.password:
        raise ValueError(f"{quote(value)} holds credentials; put the key in the variable api_key_env names")
    url = value.rstrip("/")
    return url if parts.path.rstrip("/") else url + "/v1"


BaseURL = Annotated[str, AfterValidator(_base_url)]


class ServerOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    urls: list[BaseURL] = Field(
        min_length=1,
        description="Base URLs of OpenAI-compatible servers serving model.path with runtime LoRA loading "
        "(vLLM: `vllm serve MODEL --enable-lora` with VLLM_ALLOW_RUNTIME_LORA_UPDATING=1), e.g. http://gpu-1:8000/v1.",
    )
    adapter_dir: str | None = Field(
        None,
        description="Where each adapter version is written for the servers to read: a filesystem they share with "
        "the driver (None: <run_dir>/server-adapters, for servers on this machine).",
    )
    api_key_env: str | None = Field(
        None, description="Environment variable holding the servers' bearer key (None: no key)."
    )
    concurrency: int = Field(8, gt=0, description="Requests in flight per server (one prompt with its k samples each).")
    timeout_s: float = Field(300, gt=0, description="How long one request may take before it is retried elsewhere.")
    attempts: int = Field(
        3, gt=0, description="Tries per request over the servers before the run stops (exit 7, resumable)."
    )
    logprob_tolerance: float = Field(
        0.05,
        gt=0,
        description="Mean absolute gap per token allowed between a published adapter's probe log-probs on the "
        "server and the learner's (float32 on CPU: ~1e-3; bfloat16 servers need more).",
    )


class ServeOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    urls: list[BaseURL] = Field(
        min_length=1, description="Endpoints where a promoted adapter is loaded (OpenAI-compatible, runtime LoRA)."
    )
    name: str = Field(
        "current", description="The stable adapter name users request; the previous one stays as '<name>-previous'."
    )
    adapter_dir: str | None = Field(
        None, description="Where served adapters are written for the endpoints (None: <series_dir>/served)."
    )
    api_key_env: str | None = Field(None, description="Environment variable holding the endpoints' bearer key.")
    timeout_s: float = Field(60, gt=0, description="How long each load/unload call may take.")


# serving a promoted adapter (round.serve) -----------------------------------------------------
SERVED_FILE = "served.json"  # in the series directory: what each endpoint was last given


class ServeError(Exception):
    """An endpoint did not take or does not list the adapter; the message names each."""


def served_record(series_root: Path) -> dict | None:
    path = Path(series_root) / SERVED_FILE
    return json.loads(path.read_text()) if path.exists() else None


def staged(opts: ServeOptions, series_root: Path, round_id: str, adapter_dir: Path) -> str:
    """The path the endpoints read a round's adapter from: a copy in opts.adapter_dir (a
    filesystem they share), else the round's own adapter directory."""
    if opts.adapter_dir is None:
        return str(Path(adapter_dir).resolve())
    target = Path(opts.adapter_dir) / f"{Path(series_root).resolve().name}-{round_id}"
    shutil.copytree(adapter_dir, target, dirs_exist_ok=True)
    return str(target.resolve())


def serve(opts: ServeOptions, series_root: Path, current: tuple[str, Path], previous: tuple[str, Path] | None) -> dict:
    """Load round `current` (id, adapter dir) on every endpoint as opts.name and `previous` as
    '<name>-previous' (kept for rollback), each in place (requests never see the name missing),
    then check each endpoint lists opts.name at the new path. What each endpoint now serves is
    written to served.json; a failure anywhere is a ServeError naming every endpoint that failed."""
    from alignloop.policies.samplers.server import ServerClient, ServerError, bearer_headers

    headers = bearer_headers(opts.api_key_env)
    now = {"round": current[0], "path": staged(opts, series_root, *current)}
    before = {"round": previous[0], "path": staged(opts, series_root, *previous)} if previous else None
    endpoints: dict[str, str] = {}
    for url in opts.urls:
        client = ServerClient(url, headers, opts.timeout_s)
        try:
            if before is not None:
                client.load_lora(f"{opts.name}-previous", before["path"], inplace=True)
            client.load_lora(opts.name, now["path"], inplace=True)
            listed = {str(m.get("id")): m.get("root") for m in client.models()}
            if listed.get(opts.name) != now["path"]:
                raise ServerError(url, f"lists {opts.name} at {listed.get(opts.name)!r}, not {now['path']!r}")
            endpoints[url] = "ok"
        except ServerError as e:
            endpoints[url] = str(e)
        finally:
            client.close()
    record = {"name": opts.name, "current": now, "previous": before, "endpoints": endpoints}
    tmp = Path(series_root) / f".{SERVED_FILE}.tmp"
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, Path(series_root) / SERVED_FILE)
    failed = [f"{u}: {what}" for u, what in endpoints.items() if what != "ok"]
    if failed:
        raise ServeError("; ".join(failed))
    return record
