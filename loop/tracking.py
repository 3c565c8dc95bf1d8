"""Experiment tracking: every finished iteration's metrics (and a table of sample responses
with their judgments) sent to TensorBoard, Weights & Biases or MLflow, through their own
libraries.

The curves' x axis is the series-wide iteration (a nightly round continues its series'
curves). A resumed run continues the same curves: each backend's last sent step is kept in
`<run_dir>/tracking.json`; on start, the iterations finished since are sent first, and
TensorBoard purges anything past that step (sent just before a kill), so no step is missing
or doubled.
"""

from __future__ import annotations

import importlib.util
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from alignloop.loop.config import ConfigError, RunConfig, redact
from alignloop.loop.store import RunStore, atomic_write_text, make_dirs
from alignloop.records import Judgment, Prompt, Sample

PACKAGES = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb"), "mlflow": ("mlflow", "mlflow")}


def check_backends(cfg: RunConfig) -> None:
    """Before anything starts: every configured backend's package is importable."""
    for name in cfg.tracking.backends:
        module, extra = PACKAGES[name]
        if importlib.util.find_spec(module) is None:
            raise ConfigError(
                f"tracking.backends lists {name!r} but the {module} package is not installed; "
                f"pip install 'alignloop[{extra}]' (or pip install {module}), or remove it from tracking.backends"
            )


def scalars(metrics: dict) -> dict[str, float]:
    """The numeric metrics, named by group (train/, judge/, time/), plus sampling tokens/s."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        group = (
            "judge"
            if key.startswith("judge_") or key in ("n_judged", "n_judge_errors")
            else "time"
            if key.endswith("_s")
            else "train"
        )
        out[f"{group}/{key}"] = float(value)
    if metrics.get("sample_s") and metrics.get("tokens_sampled"):
        out["time/tokens_per_s"] = metrics["tokens_sampled"] / metrics["sample_s"]
    return out


def sample_rows(prompts: list[Prompt], samples: list[Sample], judgments: list[Judgment], n: int) -> list[list]:
    """The first n samples as table rows: prompt, response, verdict, score, critique, error."""
    by_id = {p.id: p for p in prompts}
    rows = []
    for s, j in list(zip(samples, judgments))[:n]:
        rows.append(
            [
                by_id[s.prompt_id].instruction,
                s.response,
                j.verdict or "",
                "" if j.score is None else j.score,
                j.critique or "",
                j.error or "",
            ]
        )
    return rows


COLUMNS = ["prompt", "response", "verdict", "score", "critique", "error"]


class TensorBoardTracker:
    def __init__(self, cfg: RunConfig, log_dir: Path, run_name: str, after_step: int):
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: events a killed process wrote past the last recorded step are dropped.
        self.writer = SummaryWriter(str(log_dir / "tensorboard"), purge_step=after_step + 1)

    def log(self, step: int, values: dict[str, float], rows: list[list]) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)
        if rows:

            def cell(v):
                return str(v).replace("|", "\\|").replace("\n", " ")

            table = "| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS) + "\n"
            table += "\n".join("| " + " | ".join(cell(v) for v in r) + " |" for r in rows)
            self.writer.add_text("samples", table, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    def __init__(self, cfg: RunConfig, log_dir: Path, run_name: str, after_step: int):
        import wandb

        opts = cfg.tracking.wandb
        self.wandb = wandb
        self.run = wandb.init(
            project=opts.project,
            entity=opts.entity,
            name=run_name,
            id=run_name,
            resume="allow",
            mode=opts.mode,
            dir=str(log_dir),
            # Masked as config.yaml is: a round's eval judge, or a key pasted into any field, is in here too.
            config=redact(cfg.model_dump(mode="json", exclude={"judge"})),
        )

    def log(self, step: int, values: dict[str, float], rows: list[list]) -> None:
        payload: dict[str, object] = dict(values)
        if rows:
            payload["samples"] = self.wandb.Table(columns=list(COLUMNS), data=[[str(v) for v in r] for r in rows])
        self.run.log(payload, step=step)

    def close(self) -> None:
        self.run.finish()


class MlflowTracker:
    def __init__(self, cfg: RunConfig, log_dir: Path, run_name: str, after_step: int):
        import mlflow

        opts = cfg.tracking.mlflow
        self.mlflow = mlflow
        # A local SQLite store: MLflow 3 keeps its plain-file store in maintenance mode only.
        mlflow.set_tracking_uri(opts.tracking_uri or f"sqlite:///{(log_dir / 'mlflow.db').resolve()}")
        if opts.tracking_uri is None and mlflow.get_experiment_by_name(opts.experiment) is None:
            # Artifacts beside the store, in the run's directory: by default MLflow puts them
            # in ./mlruns of whatever directory the run was started from.
            mlflow.create_experiment(opts.experiment, artifact_location=(log_dir / "mlartifacts").resolve().as_uri())
        mlflow.set_experiment(opts.experiment)
        found = mlflow.search_runs(filter_string=f"tags.alignloop_run = '{run_name}'", output_format="list")
        self.run = (
            mlflow.start_run(run_id=found[0].info.run_id)
            if found
            else mlflow.start_run(run_name=run_name, tags={"alignloop_run": run_name})
        )

    def log(self, step: int, values: dict[str, float], rows: list[list]) -> None:
        self.mlflow.log_metrics({k.replace("/", "."): v for k, v in values.items()}, step=step)
        if rows:
            # log_dict, not log_table: the latter needs pandas, which nothing else here does.
            # (mlflow's hint says dict; it writes any JSON-serialisable value)
            self.mlflow.log_dict([dict(zip(COLUMNS, r)) for r in rows], f"samples/iter-{step:04d}.json")  # type: ignore[arg-type]

    def close(self) -> None:
        self.mlflow.end_run()


class Tracker(Protocol):
    """What every backend above provides."""

    def log(self, step: int, values: dict[str, float], rows: list[list]) -> None: ...

    def close(self) -> None: ...


# name -> the backend's class, called as (cfg, log_dir, run_name, after_step)
BACKENDS: dict[str, Callable[[RunConfig, Path, str, int], Tracker]] = {
    "tensorboard": TensorBoardTracker,
    "wandb": WandbTracker,
    "mlflow": MlflowTracker,
}


class Tracking:
    """The configured backends of one run, fed once per finished iteration."""

    def __init__(self, cfg: RunConfig, store: RunStore, base: int = 0):
        self.cfg, self.store, self.base = cfg, store, base
        self.path = store.root / "tracking.json"
        self.sent: dict[str, int] = json.loads(self.path.read_text()) if self.path.exists() else {}
        log_dir = Path(cfg.tracking.dir) if cfg.tracking.dir else store.root / "tracking"
        make_dirs(log_dir)  # 0700 unless shared_files: the backends' files hold sample responses
        self.trackers: dict[str, Tracker] = {
            name: BACKENDS[name](cfg, log_dir, cfg.name, base + self.sent.get(name, 0))
            for name in cfg.tracking.backends
        }

    def catch_up(self) -> None:
        """Send the finished iterations a backend has not had yet (a resumed run)."""
        for metrics in self.store.read_metrics():
            i = metrics["iteration"]
            for name in [n for n in self.trackers if self.sent.get(n, 0) < i]:
                self._send(name, i, metrics, self.rows(i))

    def log_iteration(self, i: int, metrics: dict, prompts, samples, judgments) -> None:
        rows = sample_rows(prompts, samples, judgments, self.cfg.tracking.samples)
        for name in self.trackers:
            if self.sent.get(name, 0) < i:
                self._send(name, i, metrics, rows)

    def rows(self, i: int) -> list[list]:
        judgments = self.store.load_judgments(i)
        if not self.cfg.tracking.samples or judgments is None:
            return []
        prompts, samples = self.store.load_samples(i)
        return sample_rows(prompts, samples, judgments, self.cfg.tracking.samples)

    def _send(self, name: str, i: int, metrics: dict, rows: list[list]) -> None:
        self.trackers[name].log(self.base + i, scalars(metrics), rows)
        self.sent[name] = i
        atomic_write_text(self.path, json.dumps(self.sent) + "\n")

    def close(self) -> None:
        for tracker in self.trackers.values():
            tracker.close()
