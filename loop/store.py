"""The run directory: atomic writes, per-iteration artifacts and resume bookkeeping.

    runs/<name>/config.yaml      resolved config, secrets redacted
    runs/<name>/state.json       last finished step (the single source of truth for resume)
    runs/<name>/iter-0001/       samples.jsonl judgments.jsonl metrics.json adapter/ learner_state.pt
    runs/<name>/metrics.jsonl    one line per finished iteration, rebuilt from iter-*/metrics.json
    runs/<name>/placement.jsonl  one line per start: the Ray node each actor runs on
    runs/<name>/start-adapter/   sampling ahead only: the adapter the run started from
    runs/<name>/.alignloop-run   the marker: alignloop made this directory (--overwrite clears only such a one)

Every file is written to a temporary name and renamed into place, so a SIGKILL leaves either
the old file or the new one, never half of one. state.json is written last, after the
artifacts of the step it records.

What a run writes holds prompts, responses, judgments and its config: files are created
readable by their owner only (0600, the directories made for them 0700) unless the config
sets `shared_files: true` (then the umask decides, as for any file). Only modes change, never
a byte of what is written.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel

from alignloop.loop.config import ConfigError, RunConfig, resume_conflicts, to_yaml
from alignloop.loop.cursor import STEPS, Cursor, Step
from alignloop.policies.adapter import WEIGHTS, AdapterPayload
from alignloop.records import Judgment, Prompt, Sample
from alignloop.records.secrets import quote

UMASK = os.umask(0)
os.umask(UMASK)
_shared = False  # set from the config's shared_files when a run directory is prepared
R = TypeVar("R", bound=BaseModel)


def share_files(shared: bool) -> None:
    """Whether files written from now on get the umask's permissions (True) or the owner's only."""
    global _shared
    _shared = shared


def file_mode() -> int:
    return 0o666 & ~UMASK if _shared else 0o600


def dir_mode() -> int:
    return 0o777 & ~UMASK if _shared else 0o700


def make_dirs(path: Path) -> None:
    """mkdir -p, every directory it creates getting dir_mode() (mkdir's `parents` would give the
    parents the umask's)."""
    missing = []
    while not path.is_dir() and path != path.parent:
        missing.append(path)
        path = path.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=dir_mode())
        except FileExistsError:
            if not d.is_dir():
                raise
            # another writer made it at the same moment


def atomic_write_bytes(path: Path, data: bytes) -> None:
    make_dirs(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_dir(path: Path, files: dict[str, bytes]) -> None:
    """Write a whole directory at once: fill a temporary sibling, then swap it in."""
    make_dirs(path.parent)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    for name, data in files.items():
        (tmp / name).write_bytes(data)
        os.chmod(tmp / name, file_mode())
    os.chmod(tmp, dir_mode())  # mkdtemp made it 0700: no one else could look in while it filled
    if path.exists():
        old = path.with_name(f".{path.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)


def write_jsonl(path: Path, records: Iterable[BaseModel]) -> None:
    atomic_write_text(path, "".join(r.model_dump_json() + "\n" for r in records))


def read_jsonl(path: Path, cls: type[R]) -> list[R]:
    with open(path, encoding="utf-8") as f:
        return [cls.model_validate_json(line) for line in f if line.strip()]


@dataclass
class RunState:
    """Where a run stands: `step` of `iteration` is the last thing that finished.
    iteration 0 / step "learn" means nothing has run yet (the initial adapter is version 0)."""

    iteration: int = 0
    step: Step = "learn"
    adapter_version: int = 0
    adapter_checksum: str | None = None
    cursor: Cursor = field(default_factory=Cursor)
    # Where the run starts (a nightly round: the series' promoted adapter). `base` iterations
    # ran before it in its series: this run's iteration i is the series' base + i, which seeds
    # sampling and training, so N one-iteration rounds equal one N-iteration run.
    base: int = 0
    origin: str | None = None  # a directory with adapter/ and learner_state.pt
    origin_optimizer: bool = True  # False: start from the origin's adapter with a fresh optimizer

    def last_learned(self) -> int:
        """This run's iteration whose adapter is the current one (0: the starting adapter)."""
        return self.iteration if self.step == "learn" else self.iteration - 1

    def next_step(self) -> tuple[int, Step]:
        """The step a resumed run starts with."""
        i = STEPS.index(self.step)
        if i == len(STEPS) - 1:
            return self.iteration + 1, STEPS[0]
        return self.iteration, STEPS[i + 1]

    def to_json(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["data"] = out.pop("cursor").to_json()  # "data": the name state.json has always used
        return {
            k: out[k]
            for k in (
                "iteration",
                "step",
                "adapter_version",
                "adapter_checksum",
                "data",
                "base",
                "origin",
                "origin_optimizer",
            )
        }

    @classmethod
    def from_json(cls, data: dict) -> RunState:
        """Raises ValueError naming the first field whose value has the wrong type."""
        if problem := state_problem(data):
            raise ValueError(problem)
        data = dict(data)
        cursor = data.pop("data", {})
        if not isinstance(cursor, dict):
            raise TypeError("'data' is not an object")
        return cls(**data, cursor=Cursor.from_json(cursor))


def _count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _text_or_none(v) -> bool:
    return v is None or isinstance(v, str)


# state.json's fields: what each must be, said as the error says it.
_STATE_FIELDS = {
    "iteration": (_count, "a whole number >= 0"),
    "step": (lambda v: v in STEPS, f"one of {', '.join(STEPS)}"),
    "adapter_version": (_count, "a whole number >= 0"),
    "adapter_checksum": (_text_or_none, "a string or null"),
    "data": (lambda v: isinstance(v, dict), "an object"),
    "base": (_count, "a whole number >= 0"),
    "origin": (_text_or_none, "a string or null"),
    "origin_optimizer": (lambda v: isinstance(v, bool), "true or false"),
}


def state_problem(data: dict) -> str | None:
    """The first field of a state.json document (cursor included) of the wrong type, said
    with a short quote of its value; None when every field is what a run writes."""
    fields_ = [(k, v, *_STATE_FIELDS[k]) for k, v in data.items() if k in _STATE_FIELDS]
    cursor = data.get("data")
    if isinstance(cursor, dict):
        fields_ += _cursor_fields(cursor)
    for name, value, ok, what in fields_:
        if not ok(value):
            return f"field {name!r} is {quote(value, 40)}, not {what}"
    return None


def _cursor_fields(cursor: dict) -> list[tuple]:
    out: list[tuple] = []
    stream, pending, ahead = cursor.get("stream"), cursor.get("pending"), cursor.get("ahead")
    out.append(("data.stream", stream, lambda v: v is None or isinstance(v, dict), "an object or null"))
    if isinstance(stream, dict):
        for k in ("epoch", "position"):
            out.append((f"data.stream.{k}", stream.get(k), _count, "a whole number >= 0"))
        order = stream.get("order")
        out.append(
            (
                "data.stream.order",
                order,
                lambda v: v is None or (isinstance(v, list) and all(_count(i) for i in v)),
                "a list of whole numbers or null",
            )
        )
    out.append(("data.pending", pending, lambda v: v is None or isinstance(v, dict), "an object or null"))
    out.append(("data.ahead", ahead, lambda v: v is None or isinstance(v, dict), "an object or null"))
    for j, entry in (ahead or {}).items() if isinstance(ahead, dict) else ():
        out.append((f"data.ahead.{j}", j, lambda v: v.isdigit(), "an iteration number"))
        out.append((f"data.ahead.{j}", entry, lambda v: isinstance(v, dict) and "step" in v, "an object with a step"))
        if isinstance(entry, dict):
            out.append((f"data.ahead.{j}.step", entry.get("step"), lambda v: v in STEPS, f"one of {', '.join(STEPS)}"))
            out.append(
                (f"data.ahead.{j}.pending", entry.get("pending", {}), lambda v: isinstance(v, dict), "an object")
            )
    return out


class RunStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def iter_dir(self, iteration: int) -> Path:
        return self.root / f"iter-{iteration:04d}"

    def log_placement(self, placement: dict) -> None:
        """Append where this start's actors run (node ids per group); a resumed run may be
        placed differently, so every start gets its line."""
        if placement:
            line = json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **placement}, sort_keys=True)
            fd = os.open(self.root / "placement.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, file_mode())
            with open(fd, "a", encoding="utf-8") as f:
                f.write(line + "\n")

    # per-iteration artifacts ---------------------------------------------------------------
    def save_samples(self, i: int, prompts: list[Prompt], samples: list[Sample]) -> None:
        write_jsonl(self.iter_dir(i) / "prompts.jsonl", prompts)
        write_jsonl(self.iter_dir(i) / "samples.jsonl", samples)

    def load_samples(self, i: int) -> tuple[list[Prompt], list[Sample]]:
        d = self.iter_dir(i)
        return read_jsonl(d / "prompts.jsonl", Prompt), read_jsonl(d / "samples.jsonl", Sample)

    def judgments_path(self, i: int) -> Path:
        return self.iter_dir(i) / "judgments.jsonl"

    def save_judgments(self, i: int, judgments: list[Judgment]) -> None:
        write_jsonl(self.judgments_path(i), judgments)

    def load_judgments(self, i: int) -> list[Judgment] | None:
        path = self.judgments_path(i)
        return read_jsonl(path, Judgment) if path.exists() else None

    def save_learned(self, i: int, payload: AdapterPayload, learner_state: bytes) -> None:
        """The adapter and the optimizer state after iteration i; only the newest optimizer
        state is needed to resume, so the previous one is removed once this one is written."""
        atomic_write_dir(self.iter_dir(i) / "adapter", payload.files())
        atomic_write_bytes(self.iter_dir(i) / "learner_state.pt", learner_state)

    def drop_old_learner_state(self, i: int) -> None:
        (self.iter_dir(i - 1) / "learner_state.pt").unlink(missing_ok=True)

    @property
    def start_adapter_dir(self) -> Path:
        return self.root / "start-adapter"

    def save_start_adapter(self, payload: AdapterPayload) -> None:
        """The adapter the run started from: sampling ahead, a resumed run may sample from it
        again after the learner has moved on."""
        atomic_write_dir(self.start_adapter_dir, {**payload.files(), "version": str(payload.version).encode()})

    def learned_adapter(self, k: int) -> AdapterPayload:
        """The adapter iteration k learned (0: the one the run started from), read back."""
        if k == 0:
            d, version_of = self.start_adapter_dir, lambda: int((d / "version").read_text())
        else:
            d, version_of = (
                self.iter_dir(k) / "adapter",
                lambda: self._json(self.iter_dir(k) / "metrics.json")["adapter_version"],
            )
        if not (d / WEIGHTS).exists():
            raise self.damaged(
                d / WEIGHTS, "missing: sampling ahead (asynchronous.max_staleness), a later iteration samples from it"
            )
        return AdapterPayload.from_dir(d, version_of())

    def starting_point(self, state: RunState) -> tuple[AdapterPayload, bytes | None] | None:
        """The adapter (and optimizer state) a resumed run continues from: its last learned
        iteration, else its origin; None for a fresh adapter."""
        last = state.last_learned()
        source = self.iter_dir(last) if last else Path(state.origin) if state.origin else None
        if source is None:
            return None
        payload = AdapterPayload.from_dir(source / "adapter", state.adapter_version)
        opt = source / "learner_state.pt"
        fresh = not last and not state.origin_optimizer
        return payload, None if fresh else opt.read_bytes()

    # state -----------------------------------------------------------------
    @property
    def state_path(self) -> Path:
        return self.root / "state.json"

    def load_state(self) -> RunState | None:
        if not _present(self.state_path):
            return None
        data = self._json(self.state_path)
        try:
            return RunState.from_json(data)
        except (TypeError, KeyError, ValueError, AttributeError) as e:
            raise self.damaged(self.state_path, f"not a run state ({e})") from None

    def save_state(self, state: RunState) -> None:
        atomic_write_text(self.state_path, json.dumps(state.to_json(), indent=2) + "\n")

    # config ------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.root / "config.yaml"

    def has_progress(self) -> bool:
        return self.state_path.exists() or any(self.root.glob("iter-*"))

    def reset(self) -> None:
        """Start over (--overwrite): remove what a run writes here and nothing else. The user's
        files beside it stay, and so does the lock, which the caller holds; the marker goes
        last, so a reset killed half-way leaves a directory that is still alignloop's."""
        if not self.root.is_dir():
            return
        for p in sorted(self.root.iterdir(), key=lambda p: p.name == MARKER):
            if written_by_a_run(p.name):
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()

    # metrics -----------------------------------------------------------------
    def write_metrics(self, iteration: int, metrics: dict) -> None:
        atomic_write_text(self.iter_dir(iteration) / "metrics.json", json.dumps(metrics, indent=2) + "\n")
        self.rebuild_metrics_jsonl(upto=iteration)

    def rebuild_metrics_jsonl(self, upto: int) -> None:
        """metrics.jsonl is derived from the per-iteration files, so it can never disagree with them."""
        lines = []
        for i in range(1, upto + 1):
            p = self.iter_dir(i) / "metrics.json"
            if p.exists():
                lines.append(json.dumps(self._json(p)) + "\n")
        atomic_write_text(self.root / "metrics.jsonl", "".join(lines))

    def read_metrics(self) -> list[dict]:
        p = self.root / "metrics.jsonl"
        if not _present(p):
            return []
        try:
            text = p.read_text(errors="replace")
        except OSError as e:  # a symlink loop, a directory, no permission: never "no iterations"
            raise self.damaged(p, f"cannot be read ({e.strerror or e})") from None
        rows = []
        for n, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except ValueError as e:
                    # Derived data: repaired from the per-iteration files, and said so.
                    last = max(
                        (int(d.name[5:]) for d in self.root.glob("iter-[0-9]*") if d.name[5:].isdigit()), default=0
                    )
                    self.rebuild_metrics_jsonl(upto=last)
                    print(
                        f"alignloop: {p} was damaged (line {n}: {e}); rebuilt it from iter-*/metrics.json",
                        file=sys.stderr,
                    )
                    return self.read_metrics()
        return rows

    def verify(self, state: RunState) -> None:
        """The run directory holds what state.json says finished: every file of every
        finished step, record counts that agree, and the adapter whose checksum it records.
        Damage is reported precisely; continuing from it would silently train on less."""
        last = state.last_learned()
        need = {
            "sample": ["prompts.jsonl", "samples.jsonl"],
            "judge": ["judgments.jsonl"],
            "learn": ["metrics.json", "adapter/adapter_model.safetensors", "adapter/adapter_config.json"],
        }
        for i in range(1, state.iteration + 1):
            d = self.iter_dir(i)
            steps = STEPS if i < state.iteration else STEPS[: STEPS.index(state.step) + 1]
            for name in [f for step in steps for f in need[step]]:
                if not (d / name).exists():
                    raise self.damaged(
                        d / name, f"missing, though state.json records iteration {i} {steps[-1]} as finished"
                    )
            samples = _count_lines(d / "samples.jsonl")
            if "judge" in steps and _count_lines(d / "judgments.jsonl") != samples:
                raise self.damaged(
                    d / "judgments.jsonl", f"{_count_lines(d / 'judgments.jsonl')} judgments for {samples} samples"
                )
        for j, entry in sorted((state.cursor.ahead or {}).items()):  # sampled ahead of the learner
            steps = STEPS[: STEPS.index(entry.step) + 1]
            for name in [f for step in steps if step != "learn" for f in need[step]]:
                if not (self.iter_dir(int(j)) / name).exists():
                    raise self.damaged(
                        self.iter_dir(int(j)) / name,
                        f"missing, though state.json records iteration {j} {steps[-1]} as finished",
                    )
        if last and not (self.iter_dir(last) / "learner_state.pt").exists():
            raise self.damaged(
                self.iter_dir(last) / "learner_state.pt", "missing: the optimizer state to continue from"
            )
        if last:
            weights = (self.iter_dir(last) / "adapter" / WEIGHTS).read_bytes()
            if hashlib.sha256(weights).hexdigest() != state.adapter_checksum:
                raise self.damaged(
                    self.iter_dir(last) / "adapter" / WEIGHTS,
                    f"its sha256 is not the one state.json records for adapter v{state.adapter_version}",
                )

    # damage ------------------------------------------------------------------
    def _json(self, path: Path) -> dict:
        try:
            data = json.loads(path.read_bytes())
        except (ValueError, UnicodeDecodeError) as e:
            raise self.damaged(path, f"not valid JSON ({e})") from None
        except OSError as e:
            raise self.damaged(path, f"cannot be read ({e.strerror or e})") from None
        except RecursionError:
            raise self.damaged(path, "nested too deeply to be a run's file") from None
        if not isinstance(data, dict):
            raise self.damaged(path, "not a JSON object")
        return data

    def damaged(self, path: Path, what: str) -> ConfigError:
        """A damaged run directory is reported, never silently continued."""
        return ConfigError(
            f"{path}: damaged run directory: {what}; restore it from a backup, or start the run over with --overwrite"
        )


def _present(path: Path) -> bool:
    """There, readable or not: exists() says False for a symlink loop or a dangling link, which
    must be reported as damage rather than read as nothing."""
    return path.exists() or path.is_symlink()


def _count_lines(path: Path) -> int:
    return sum(1 for line in path.read_bytes().splitlines() if line.strip())


# ---------------------------------------------------------------------------------------------
# Whose directory it is: a run goes only into a new or empty directory or one alignloop made,
# and --overwrite removes only what a run writes.
# ---------------------------------------------------------------------------------------------

# The file alignloop puts in every run directory it makes or prepares.
MARKER = ".alignloop-run"
MARKER_TEXT = (
    "An alignloop run directory: `alignloop run --overwrite` deletes what the run wrote here "
    "(config.yaml, state.json, metrics.jsonl, placement.jsonl, tracking.json, tracking/, "
    "start-adapter/, iter-*/) and nothing else.\n"
)
# What a run writes at the top of its directory besides iter-NNNN/: what reset() removes.
RUN_FILES = (
    "config.yaml",
    "state.json",
    "metrics.jsonl",
    "placement.jsonl",
    "tracking.json",
    "tracking",
    "start-adapter",
    MARKER,
)
LOCK = ".lock"  # loop/lock.py's file, taken before the directory is prepared


def mark_run_dir(root: str | Path) -> None:
    """Record that alignloop made this run directory (or adopted one from before the marker)."""
    atomic_write_text(Path(root) / MARKER, MARKER_TEXT)


def is_run_dir(root: str | Path) -> bool:
    """alignloop's own run directory: it holds the marker, or it is a run from before the
    marker: config.yaml and an iter-NNNN/ directory (state.json too once a step finished)."""
    root = Path(root)
    if (root / MARKER).is_file():
        return True
    return (root / "config.yaml").is_file() and any(_is_iteration(p.name) and p.is_dir() for p in root.iterdir())


def _is_iteration(name: str) -> bool:
    return name.startswith("iter-") and name[5:].isdigit()


def written_by_a_run(name: str) -> bool:
    """Whether reset() removes this entry of a run directory: a run's file, an iteration, or
    what an atomic write killed half-way leaves of one (`.<name>.<random>.tmp`, `.<name>.old`)."""
    if name in RUN_FILES or _is_iteration(name):
        return True
    return any(name.startswith(f".{f}.") and (name.endswith(".tmp") or name == f".{f}.old") for f in RUN_FILES)


def others_files(root: str | Path) -> list[str]:
    """What a directory holds besides alignloop's lock ([] for a new or an empty one)."""
    root = Path(root)
    return sorted(p.name for p in root.iterdir() if p.name != LOCK) if root.is_dir() else []


def refuse_unsafe_dir(path: str | Path, flag: str, fix: str) -> None:
    """`/`, the home directory and the current directory are never a run's or an adapter's own
    directory: refused however empty they are, so a slip such as `--set run_dir=.` deletes nothing."""
    resolved = Path(path).resolve()
    for place, what in (
        (Path("/"), "the filesystem root"),
        (Path.home(), "your home directory"),
        (Path.cwd(), "the current directory"),
    ):
        if resolved == place.resolve():
            raise ConfigError(f"{flag}: {path} is {what}, which alignloop never clears or replaces; {fix}")


def check_ownership(root: Path, overwrite: bool, name: str) -> None:
    """A run writes only into a new or empty directory or a run directory of alignloop's, and
    --overwrite clears only the latter: a directory of the user's files is never touched."""
    if root.exists() and not root.is_dir():
        raise ConfigError(f"run_dir {root}: is a file, not a directory; set run_dir to a directory, e.g. runs/{name}")
    above = next((p for p in root.parents if p.exists() or p.is_symlink()), None)
    if above is not None and not above.is_dir():
        raise ConfigError(f"run_dir {root}: {above} is a file, not a directory; set run_dir to a directory")
    if overwrite:
        refuse_unsafe_dir(root, "--overwrite", f"set run_dir to a directory of its own, e.g. --set run_dir=runs/{name}")
    found = others_files(root)
    if found and not is_run_dir(root):
        shown = ", ".join(found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
        why = (
            "--overwrite clears only a run directory alignloop made"
            if overwrite
            else "a run goes only into a new or empty directory or a run directory alignloop made"
        )
        raise ConfigError(
            f"{root} is not an alignloop run directory (no {MARKER}) and holds files ({shown}); {why}: "
            f"set run_dir to a new directory (e.g. --set run_dir=runs/{name}) or move those files away"
        )


def prepare_run_dir(cfg: RunConfig, resume: bool, overwrite: bool) -> RunStore:
    """check_run_dir, then start over (--overwrite), mark the directory as alignloop's and
    save the resolved config."""
    store = check_run_dir(cfg, resume, overwrite)
    share_files(cfg.shared_files)
    if overwrite:
        store.reset()
    make_dirs(store.root)
    if not (store.root / MARKER).exists() and not cfg.shared_files:
        # New (the lock made it), empty, or a run from before the marker: its files are private.
        try:
            os.chmod(store.root, dir_mode())
        except PermissionError:
            pass  # not ours to change; the files in it are still created 0600
    mark_run_dir(store.root)  # a run from before the marker gets it here
    atomic_write_text(store.config_path, to_yaml(cfg))
    return store


def check_run_dir(cfg: RunConfig, resume: bool, overwrite: bool) -> RunStore:
    """Refuse to write into a directory alignloop did not make, to mix two configs in one run
    directory, or to clobber progress by accident. Reads only."""
    store = RunStore(cfg.resolved_run_dir)
    check_ownership(store.root, overwrite, cfg.name)
    if overwrite:
        return store
    if store.has_progress():
        if not resume:
            raise ConfigError(
                f"{store.root} already holds a run; pass --resume to continue it or --overwrite to start over"
            )
        state = store.load_state()  # a damaged state.json is reported before anything is compared
        if state is not None:
            store.verify(state)
        if not store.config_path.exists():
            raise store.damaged(store.config_path, "missing (every run saves its resolved config there)")
        try:
            saved = yaml.safe_load(store.config_path.read_text())
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise store.damaged(store.config_path, f"not valid YAML ({e})") from None
        if not isinstance(saved, dict):
            raise store.damaged(store.config_path, "not a mapping of config fields")
        conflicts = resume_conflicts(saved, cfg)
        if conflicts:
            raise ConfigError(
                f"{store.root} holds a run with a different config (fields: {', '.join(conflicts)}); "
                "resume with the same config, use another run name, or pass --overwrite to start over"
            )
    return store
