"""Nightly rounds: a series of ordinary runs that continue, are gated, and promote an adapter.

    runs/<name>/series.json        one entry per round: prompts, metrics, gate verdict, adapter
    runs/<name>/ledger.jsonl       every prompt the series has drawn: id, content hash, round
    runs/<name>/rounds/<ID>/       an ordinary run directory (alignloop status / train --data work on it)
        prompts.jsonl              the round's new prompts (its data.path: a rerun draws nothing again)
        eval-before/ eval-after/   samples.jsonl judgments.jsonl metrics.json of the gate
    runs/<name>/eval-cache/<key>/  the eval of an adapter, computed once (key: adapter + eval setup)
    runs/<name>/current            symlink to the promoted adapter directory, switched atomically
    runs/<name>/served.json        round.serve: what each endpoint serves (current and previous round)
    runs/<name>/rollback.json      after `alignloop round CFG --rollback ID`: the round current is back at

A round starts from the promoted adapter and its optimizer state; its iteration i is the
series' iteration base + i, so a series of one-iteration rounds is one run of as many
iterations. The gate samples and judges held-out prompts before (cached) and after training.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pydantic import TypeAdapter, ValidationError

from alignloop.loop.config import ConfigError, RunConfig
from alignloop.loop.data import DataError, content_hash, load_data, load_prompts, prompt_files
from alignloop.loop.exits import Exit
from alignloop.loop.lock import DirLock
from alignloop.loop.metrics import judgment_metrics
from alignloop.loop.preflight import preflight_run
from alignloop.loop.progress import eval_line
from alignloop.loop.store import (
    RunState,
    RunStore,
    atomic_write_dir,
    atomic_write_text,
    mark_run_dir,
    prepare_run_dir,
    write_jsonl,
)
from alignloop.policies.adapter import AdapterPayload
from alignloop.records import Prompt
from alignloop.records.metrics import merge_metrics
from alignloop.records.secrets import quote

# Exit codes a scheduler reads (also 2: config or data error, 3: judge error budget, 1: a crash).
PROMOTED, REJECTED, NO_NEW_PROMPTS, LOCKED = Exit.OK, Exit.REJECTED, Exit.NO_NEW_PROMPTS, Exit.LOCKED
EVAL_STEP = 0  # the sampling seed of every eval: before and after see the same draw


@dataclass
class RoundEntry:
    """One round in series.json."""

    id: str
    status: str = "running"  # running | promoted | rejected
    started: str = ""
    finished: str | None = None
    n_prompts: int = 0
    iterations: int = 0
    base: int = 0  # series iterations before this round
    start_version: int = 0
    start_checksum: str | None = None
    train: dict = field(default_factory=dict)  # last iteration's pass rate, score, loss
    eval_before: dict | None = None
    eval_after: dict | None = None
    verdict: str | None = None
    adapter_version: int | None = None
    adapter_sha256: str | None = None
    adapter_dir: str | None = None  # relative to the series directory

    @property
    def exit_code(self) -> int:
        return PROMOTED if self.status == "promoted" else REJECTED


# series.json, checked field by field (strict: "3" is not a count); pydantic reads the dataclass.
_SERIES_FILE = TypeAdapter(dict[str, list[RoundEntry]])


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


class Series:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.path = self.root / "series.json"

    # history -------------------------------------------------------------------------------
    def rounds(self) -> list[RoundEntry]:
        if not self.path.exists():
            return []
        try:
            rounds = _SERIES_FILE.validate_json(self.path.read_bytes(), strict=True)["rounds"]
        except ValidationError as e:
            error = e.errors()[0]
            where = ".".join(str(part) for part in error["loc"])  # rounds.1.n_prompts
            raise self.damaged(f"{where}: {error['msg']}, got {quote(error['input'], 40)}") from None
        except KeyError:
            raise self.damaged("no `rounds` list") from None
        for n, r in enumerate(rounds):
            if not plain_round_id(r.id):
                raise self.damaged(f"rounds.{n}.id: {quote(r.id, 40)} is not a round id")
            for name in ("train", "eval_before", "eval_after"):  # numbers (or null), shown and compared
                bad = next(
                    (k for k, v in (getattr(r, name) or {}).items() if v is not None and not _is_number(v)), None
                )
                if bad is not None:
                    raise self.damaged(f"rounds.{n}.{name}.{bad}: {quote(getattr(r, name)[bad], 40)} is not a number")
        return rounds

    def damaged(self, what: str) -> ConfigError:
        return ConfigError(
            f"{self.path}: damaged series file ({what}); restore it from a backup or move the series away"
        )

    def save(self, rounds: list[RoundEntry]) -> None:
        atomic_write_text(self.path, json.dumps({"rounds": [asdict(r) for r in rounds]}, indent=2) + "\n")

    def get(self, round_id: str) -> RoundEntry | None:
        return next((r for r in self.rounds() if r.id == round_id), None)

    def put(self, entry: RoundEntry) -> None:
        rounds = [r for r in self.rounds() if r.id != entry.id]
        self.save(rounds + [entry])

    def promoted(self) -> RoundEntry | None:
        """The round whose adapter `current` points at: the latest promoted one, unless a
        rollback re-promoted an earlier one since (and no round was promoted after it)."""
        rounds = self.rounds()
        latest = next((r for r in reversed(rounds) if r.status == "promoted"), None)
        pin = self.rollback_pin()
        if latest is not None and pin is not None and pin.get("replaces") == latest.id:
            return next((r for r in rounds if r.id == pin.get("round") and r.status == "promoted"), latest)
        return latest

    @property
    def rollback_path(self) -> Path:
        return self.root / "rollback.json"

    def rollback_pin(self) -> dict | None:
        if not self.rollback_path.exists():
            return None
        try:
            pin = json.loads(self.rollback_path.read_text())
        except ValueError:
            pin = None
        if not isinstance(pin, dict):
            raise ConfigError(f"{self.rollback_path}: damaged (not a JSON object); remove it to follow series.json")
        return pin

    def iterations_done(self) -> int:
        return sum(r.iterations for r in self.rounds() if r.status != "running")

    def round_dir(self, round_id: str) -> Path:
        return self.root / "rounds" / round_id

    # prompts -------------------------------------------------------------------------------
    @property
    def ledger_path(self) -> Path:
        return self.root / "ledger.jsonl"

    def ledger(self) -> list[dict]:
        if not self.ledger_path.exists():
            return []
        return [json.loads(line) for line in self.ledger_path.read_text().splitlines() if line.strip()]

    def record_drawn(self, round_id: str, prompts: list[Prompt]) -> None:
        rows = [r for r in self.ledger() if r["round"] != round_id]
        rows += [{"id": p.id, "sha256": content_hash(p), "round": round_id} for p in prompts]
        atomic_write_text(self.ledger_path, "".join(json.dumps(r) + "\n" for r in rows))

    def new_prompts(self, prompts: list[Prompt], round_id: str) -> list[Prompt]:
        """The prompts no other round has drawn (by content hash), in data order."""
        seen = {r["sha256"] for r in self.ledger() if r["round"] != round_id}
        fresh, hashes = [], set()
        for p in prompts:
            h = content_hash(p)
            if h not in seen and h not in hashes:
                fresh.append(p)
                hashes.add(h)
        return fresh

    # the promoted adapter ------------------------------------------------------------------
    @property
    def current(self) -> Path:
        return self.root / "current"

    def promote(self, adapter_dir: Path) -> None:
        """Point `current` at the adapter directory in one atomic rename of a new symlink."""
        if os.path.lexists(self.current) and not self.current.is_symlink():
            raise ConfigError(f"{self.current}: not the symlink alignloop keeps there; move it away to promote")
        tmp = self.root / f".current.{os.getpid()}.tmp"
        tmp.unlink(missing_ok=True)
        os.symlink(os.path.relpath(adapter_dir, self.root), tmp)
        os.replace(tmp, self.current)


@dataclass
class RoundResult:
    code: int
    message: str
    entry: RoundEntry | None = None
    served: dict | None = None  # round.serve: what each endpoint serves now (served.json)

    def summary(self) -> dict:
        e = self.entry
        return {
            "code": self.code,
            "message": self.message,
            **(
                {
                    "round": e.id,
                    "status": e.status,
                    "n_prompts": e.n_prompts,
                    "iterations": e.iterations,
                    "eval_before": e.eval_before,
                    "eval_after": e.eval_after,
                    "adapter_version": e.adapter_version,
                    "adapter_sha256": e.adapter_sha256,
                    "judge_cost_usd": e.train.get("judge_cost_usd"),
                }
                if e
                else {}
            ),
            **({"served": self.served} if self.served is not None else {}),
        }


def plain_round_id(round_id: str) -> bool:
    return (
        bool(round_id)
        and not round_id.startswith(".")
        and all(c.isascii() and (c.isalnum() or c in "._-") for c in round_id)
    )


def check_round_id(round_id: str) -> None:
    """A round id names the round's run directory, rounds/<id>: a plain name only, so that no
    id (`..`, `a/b`) puts the round's run directory anywhere else, the series itself included."""
    if not plain_round_id(round_id):
        raise ConfigError(
            f"--round {round_id!r}: a round id names the directory rounds/<id>; use only letters, "
            "digits, '.', '_' and '-', not starting with '.' (e.g. 2026-12-01)"
        )


def run_round(cfg: RunConfig, round_id: str) -> RoundResult:
    """One round of the series, under the series lock: draw new prompts, train from the
    promoted adapter, gate, promote. Rerunning a finished round reports it; an unfinished one
    resumes where it stopped."""
    check_round_id(round_id)
    series = Series(cfg.series_dir)
    # A series that does not exist yet is created (by its lock) only for a round with prompts:
    # "nothing to do" leaves nothing behind.
    if not series.root.exists() and not draw(series, cfg, round_id):
        return no_new_prompts(cfg, round_id)
    with DirLock(series.root, "series"):
        done = series.get(round_id)
        if done is not None and done.status != "running":
            return RoundResult(done.exit_code, f"round {round_id} is already finished: {done.verdict}", done)
        prompts = draw(series, cfg, round_id)
        if not prompts:
            return no_new_prompts(cfg, round_id)
        preflight_run(round_config(cfg, series.round_dir(round_id), len(prompts)))  # before the draw is recorded
        entry = done or begin_round(series, cfg, round_id, prompts)
        return Round(series, cfg, entry).run()


def no_new_prompts(cfg: RunConfig, round_id: str) -> RoundResult:
    where = cfg.data.path.replace("{round}", round_id)
    return RoundResult(
        NO_NEW_PROMPTS,
        f"round {round_id}: no new prompts in {where} (no such file, or every "
        "prompt there was drawn by an earlier round); nothing to do",
    )


def draw(series: Series, cfg: RunConfig, round_id: str) -> list[Prompt]:
    """This round's prompts: the ones it drew before (a rerun), else the new ones, at most max_prompts."""
    snapshot = series.round_dir(round_id) / "prompts.jsonl"
    if snapshot.exists():
        return load_prompts(snapshot)
    if "{round}" in cfg.data.path and not prompt_files_exist(cfg.data.path, round_id):
        return []  # tonight's file has not arrived: a night without new prompts
    fresh = series.new_prompts(load_data(cfg.data, round_id), round_id)
    return fresh[: cfg.round.max_prompts] if cfg.round.max_prompts else fresh


def prompt_files_exist(path: str, round_id: str) -> bool:
    try:
        return bool(prompt_files(path, round_id))
    except DataError:
        return False


def begin_round(series: Series, cfg: RunConfig, round_id: str, prompts: list[Prompt]) -> RoundEntry:
    """Fix the round's prompts and starting point before anything runs: a rerun continues
    this round, never draws again."""
    d = series.round_dir(round_id)
    write_jsonl(d / "prompts.jsonl", prompts)
    series.record_drawn(round_id, prompts)
    promoted = series.promoted()
    base = series.iterations_done()
    entry = RoundEntry(
        id=round_id,
        started=_now(),
        n_prompts=len(prompts),
        iterations=cfg.iterations,
        base=base,
        start_version=promoted_version(promoted) if promoted else 0,
        start_checksum=promoted.adapter_sha256 if promoted else None,
    )
    series.put(entry)
    return entry


class Round:
    def __init__(self, series: Series, cfg: RunConfig, entry: RoundEntry):
        self.series, self.entry = series, entry
        self.dir = series.round_dir(entry.id)
        self.cfg = round_config(cfg, self.dir, entry.n_prompts)

    def run(self) -> RoundResult:
        # Imported here, not at the top: loop.run brings torch and Ray, and a finished round,
        # a locked series or a night without new prompts should answer at once.
        from alignloop.loop.run import iterate, started

        mark_run_dir(self.dir)  # rounds/<id> is the series' own, holding the drawn prompts already
        store = prepare_run_dir(self.cfg, resume=True, overwrite=False)
        if store.load_state() is None:
            store.save_state(self.initial_state())
        prompts = load_data(self.cfg.data)
        gate = self.cfg.round.eval
        with started(self.cfg, store, prompts, tracking_base=self.entry.base) as steps:
            adapter = steps.restore()
            # The gate's own judge (if any) runs beside the run's, in judge workers of its own.
            judges = steps.roles.judges_for(gate.judge) if gate and gate.judge is not None else steps.roles.judges
            before = (
                self.evaluate(steps.roles.samplers, judges, "eval-before", self.entry.start_checksum) if gate else None
            )
            adapter = iterate(steps, adapter)
            after = (
                self.evaluate(steps.roles.samplers, judges, "eval-after", adapter.payload.checksum) if gate else None
            )
        return self.finish(adapter.payload, store.read_metrics(), before, after)

    def initial_state(self) -> RunState:
        """Where the round starts: the promoted adapter with its optimizer state (or the
        config's model when nothing is promoted yet), numbered after the series so far."""
        promoted = self.series.promoted()
        origin = None
        if promoted is not None:
            assert promoted.adapter_dir is not None  # finish() records it before it promotes
            origin = str((self.series.root / promoted.adapter_dir).resolve().parent)
        return RunState(
            adapter_version=self.entry.start_version,
            adapter_checksum=self.entry.start_checksum,
            base=self.entry.base,
            origin=origin,
            origin_optimizer=not self.cfg.round.fresh_optimizer,
        )

    def evaluate(self, samplers, judges, name: str, checksum: str | None) -> dict:
        """Sample and judge the held-out prompts with the adapter the samplers serve now; the
        result is cached per adapter, so the promoted adapter is evaluated once."""
        from alignloop.loop.steps import check_error_budget, judge_samples, sample_prompts

        out = self.dir / name
        if (out / "metrics.json").exists():
            return json.loads((out / "metrics.json").read_text())
        gate = self.cfg.round.eval
        assert gate is not None  # called only when round.eval is set
        cached = self.series.root / "eval-cache" / eval_key(self.cfg, checksum)
        source = "cached" if (cached / "metrics.json").exists() else "computed"
        if source == "computed":
            prompts = load_prompts(gate.path)
            samples, sample_s = sample_prompts(samplers, self.cfg, prompts, EVAL_STEP, gate.samples_per_prompt)
            judgments, extra = judge_samples(judges, self.cfg, prompts, samples)
            metrics = merge_metrics(
                judgment_metrics(judgments),
                {
                    "n_prompts": len(prompts),
                    "n_samples": len(samples),
                    "adapter_checksum": checksum,
                    "sample_s": sample_s,
                },
                extra,
            )
            records = {"samples.jsonl": _jsonl(samples), "judgments.jsonl": _jsonl(judgments)}
            try:
                check_error_budget(
                    self.cfg, judgments, f"round {self.entry.id}: {name}", out, "fix the judge and rerun the round"
                )
            except Exception:
                atomic_write_dir(out, records)  # kept for inspection, without metrics.json: a rerun evaluates again
                raise
            atomic_write_dir(cached, {**records, "metrics.json": (json.dumps(metrics, indent=2) + "\n").encode()})
        atomic_write_dir(out, {f.name: f.read_bytes() for f in cached.iterdir() if f.is_file()})
        result = json.loads((out / "metrics.json").read_text())
        print(eval_line(name, result, source), flush=True)
        return result

    def finish(
        self, payload: AdapterPayload, metrics: list[dict], before: dict | None, after: dict | None
    ) -> RoundResult:
        e = self.entry
        last = metrics[-1] if metrics else {}
        e.train = {k: last.get(k) for k in ("pass_rate", "mean_score", "loss", "n_train")}
        # What the round's judges cost over all its iterations (judging.max_cost_usd caps it).
        e.train["judge_cost_usd"] = sum(float(m.get("judge_cost_usd") or 0.0) for m in metrics)
        e.iterations = self.cfg.iterations  # a resumed round may have been given more
        e.eval_before, e.eval_after = _brief(before), _brief(after)
        promote, e.verdict = gate_verdict(self.cfg, before, after)
        e.adapter_version, e.adapter_sha256 = payload.version, payload.checksum
        adapter_dir = RunStore(self.dir).iter_dir(self.cfg.iterations) / "adapter"
        e.adapter_dir = os.path.relpath(adapter_dir, self.series.root)
        previous = self.series.promoted()
        if promote:
            self.series.promote(adapter_dir)
        e.status, e.finished = ("promoted" if promote else "rejected"), _now()
        self.series.put(e)
        if promote and self.cfg.round.serve is not None:  # a rejected round changes nothing served
            return serve_round(self.series, self.cfg, e, previous, f"round {e.id}: {e.verdict}")
        return RoundResult(e.exit_code, f"round {e.id}: {e.verdict}", e)


def promoted_version(entry: RoundEntry) -> int:
    """The adapter version of a promoted round: finish() records it before it promotes."""
    assert entry.adapter_version is not None
    return entry.adapter_version


def gate_verdict(cfg: RunConfig, before: dict | None, after: dict | None) -> tuple[bool, str]:
    gate = cfg.round.eval
    if gate is None:
        return True, "promoted (no eval gate configured)"
    assert before is not None and after is not None  # Round.run evaluates both when the gate is set
    key = gate.metric
    b, a = before.get(key), after.get(key)
    if a is None or b is None:
        return False, f"not promoted: the eval gave no {key} (no verdicts/scores from the judge)"
    if a >= b - gate.margin:
        return True, f"promoted: eval {key} {b:.3f} -> {a:.3f} (margin {gate.margin})"
    return False, f"not promoted: eval {key} fell {b:.3f} -> {a:.3f}, more than the margin {gate.margin}; current stays"


def round_config(cfg: RunConfig, round_dir: Path, n_prompts: int) -> RunConfig:
    """The round as an ordinary run: its own directory, its drawn prompts as the data."""
    data = cfg.data.model_copy(
        update={
            "path": str(round_dir / "prompts.jsonl"),
            "columns": {},
            "split": "train",  # the snapshot is in our schema
            "prompts_per_iteration": min(cfg.data.prompts_per_iteration, n_prompts),
        }
    )
    # One tracking directory for the whole series: its curves run on across rounds.
    tracking = cfg.tracking.model_copy(update={"dir": cfg.tracking.dir or str(round_dir.parent.parent / "tracking")})
    return cfg.model_copy(update={"run_dir": str(round_dir), "data": data, "tracking": tracking})


def eval_key(cfg: RunConfig, checksum: str | None) -> str:
    """What decides an eval's result: the adapter, the eval prompts' content, the eval setup,
    the judge, the sampler settings and the seed."""
    gate = cfg.round.eval
    assert gate is not None  # only an eval gate has a key
    prompts = sorted(content_hash(p) for p in load_prompts(gate.path))
    setup = {
        "adapter": checksum or f"base:{cfg.model.path}:{cfg.model.adapter}",
        "prompts": prompts,
        "eval": gate.model_dump(mode="json", exclude={"judge"}),
        "judge": (gate.judge or cfg.judge).model_dump(mode="json"),
        "sampler": cfg.sampler.model_dump(mode="json", include={"temperature", "top_p", "max_new_tokens"}),
        "seed": cfg.seed,
    }
    return hashlib.sha256(json.dumps(setup, sort_keys=True).encode()).hexdigest()[:20]


def _brief(result: dict | None) -> dict | None:
    if result is None:
        return None
    return {k: result.get(k) for k in ("pass_rate", "mean_score", "judge_error_rate", "n_samples")}


def _jsonl(records) -> bytes:
    return "".join(r.model_dump_json() + "\n" for r in records).encode()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# serving and rollback (round.serve) -------------------------------------------------------------
def serve_round(
    series: Series, cfg: RunConfig, entry: RoundEntry, previous: RoundEntry | None, message: str
) -> RoundResult:
    """Load the promoted round on round.serve's endpoints (the one it replaces as previous). An
    endpoint that fails leaves the round promoted and stops with exit 7 and the command that
    serves it again."""
    from alignloop.loop.serving import ServeError, serve

    assert cfg.round.serve is not None and entry.adapter_dir is not None
    before = (previous.id, series.root / previous.adapter_dir) if previous and previous.adapter_dir else None
    if before is not None and before[0] == entry.id:
        before = None
    try:
        record = serve(cfg.round.serve, series.root, (entry.id, series.root / entry.adapter_dir), before)
    except ServeError as e:
        return RoundResult(
            Exit.ACTOR_LOST,
            f"{message}; serving it failed ({e}); once the endpoints answer, serve it with "
            f"`alignloop round CONFIG --rollback {entry.id}`",
            entry,
            served_record_of(series),
        )
    return RoundResult(
        PROMOTED, f"{message}; served as {record['name']} at {len(record['endpoints'])} endpoint(s)", entry, record
    )


def served_record_of(series: Series) -> dict | None:
    from alignloop.loop.serving import served_record

    return served_record(series.root)


def rollback(cfg: RunConfig, round_id: str) -> RoundResult:
    """Re-promote round `round_id` (promoted before): the endpoints first (round.serve, the
    round it replaces kept as previous), then `current`, then rollback.json, so `current`
    never points at what the endpoints do not serve. The next round starts from it."""
    check_round_id(round_id)
    series = Series(cfg.series_dir)
    if not series.path.exists():
        raise ConfigError(f"{series.root}: no series here (no series.json); nothing to roll back")
    with DirLock(series.root, "series"):
        rounds = series.rounds()
        entry = series.get(round_id)
        promoted = [r.id for r in rounds if r.status == "promoted"]
        if entry is None or entry.status != "promoted" or entry.adapter_dir is None:
            what = "no such round" if entry is None else f"its status is {entry.status}"
            raise ConfigError(
                f"--rollback {round_id}: only a round that was promoted can be promoted again ({what}); "
                f"promoted rounds: {', '.join(promoted) or 'none'}"
            )
        now = series.promoted()
        message = f"rolled back: current is round {round_id} (v{entry.adapter_version}) again"
        if now is not None and now.id == round_id:
            message = f"round {round_id} is current already"
        if cfg.round.serve is not None:
            result = serve_round(series, cfg, entry, now, message)
            if result.code != PROMOTED:
                result.message = result.message.replace(
                    "; serving it failed", "; current not changed: serving it failed"
                )
                return result
        else:
            result = RoundResult(PROMOTED, message, entry)
        series.promote(series.root / entry.adapter_dir)
        atomic_write_text(series.rollback_path, json.dumps({"round": round_id, "replaces": promoted[-1]}) + "\n")
        return result
