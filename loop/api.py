"""The public Python API, for notebooks and scripts; `alignloop` (the CLI) is a thin layer
over the same functions, and `import alignloop` exposes them:

    import alignloop

    cfg = alignloop.load_config("configs/quickstart.yaml", overrides=["iterations=2"])
    metrics = alignloop.run(cfg, resume=True)          # one row per iteration
    run = alignloop.read_run(cfg.resolved_run_dir)
    run.metrics[-1]["pass_rate"], run.samples(2)[0].response, run.judgments(2)[0].critique
    result = alignloop.run_round(cfg, "2026-12-03")    # a nightly round; result.code is its exit code

Importing this module imports neither torch nor Ray; running does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from alignloop.loop.config import ConfigError, RunConfig, load_config, validate_config
from alignloop.loop.series import RoundResult
from alignloop.loop.store import RunState, RunStore
from alignloop.records import Judgment, Prompt, Sample

__all__ = [
    "load_config",
    "validate_config",
    "run",
    "run_round",
    "read_run",
    "RunRecords",
    "RunConfig",
    "RoundResult",
    "ConfigError",
]


def run(cfg: RunConfig, resume: bool = False, overwrite: bool = False) -> list[dict]:
    """A whole run of `cfg` (on a local Ray instance, or the cluster in ray.address /
    $RAY_ADDRESS): its metrics, one dict per iteration. `resume` continues a run directory
    that holds one; `overwrite` starts it over. Raises ConfigError (and the errors the CLI
    turns into exit codes, loop/exits.py) rather than exiting."""
    from alignloop.loop.run import run as run_cycle  # imports torch and Ray

    return run_cycle(cfg, resume=resume, overwrite=overwrite)


def run_round(cfg: RunConfig, round_id: str) -> RoundResult:
    """One round of the nightly series `cfg.series_dir` (round.* in the config): new prompts,
    trained from the promoted adapter, gated, promoted or not. `result.code` is the exit code
    `alignloop round` returns (0 promoted, 4 rejected, 5 no new prompts)."""
    from alignloop.loop.series import run_round as run_one

    return run_one(cfg, round_id)


@dataclass(frozen=True)
class RunRecords:
    """A run directory, read: its state, metrics and each iteration's records."""

    store: RunStore

    @property
    def state(self) -> RunState | None:
        return self.store.load_state()

    @property
    def metrics(self) -> list[dict]:
        """One dict per finished iteration (metrics.jsonl)."""
        return self.store.read_metrics()

    def prompts(self, iteration: int) -> list[Prompt]:
        return self.store.load_samples(iteration)[0]

    def samples(self, iteration: int) -> list[Sample]:
        return self.store.load_samples(iteration)[1]

    def judgments(self, iteration: int) -> list[Judgment]:
        """One judgment per sample, in sample order ([] before the judge step finished)."""
        return self.store.load_judgments(iteration) or []


def read_run(run_dir: str | Path) -> RunRecords:
    """The records of a run directory (or of a round: <series>/rounds/<id>)."""
    root = Path(run_dir)
    if not (root / "state.json").exists() and not (root / "metrics.jsonl").exists():
        raise ConfigError(f"{root}: not a run directory (no state.json or metrics.jsonl)")
    return RunRecords(RunStore(root))
