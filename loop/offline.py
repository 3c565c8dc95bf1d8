"""Offline training on existing judged data: `alignloop train CONFIG --data PATH`.

Accepted data:
  - the official CUT format, one JSON object per line: `instruction`, `input` (optional),
    `output` (the response), `judgment` (null for a positive), `score` (optional; >= 7 is positive);
  - alignloop's own records: a JSONL of {"prompt": ..., "sample": ..., "judgment": ...} rows,
    an `iter-NNNN/` directory of a run (prompts/samples/judgments.jsonl), or a whole run directory.
Every bad row is reported with its file and line; nothing is skipped silently.
"""

from __future__ import annotations

import json
from pathlib import Path

from alignloop.loop.data import NESTING_HELP, DataError, read_records, row_to_prompt, utf8_lines
from alignloop.loop.store import refuse_unsafe_dir
from alignloop.policies.adapter import CONFIG, WEIGHTS
from alignloop.policies.model import preflight as model_preflight
from alignloop.policies.model import preflight_adapter
from alignloop.policies.objectives.base import Example
from alignloop.records import Judgment, Prompt, Sample
from alignloop.records.errors import ConfigError
from alignloop.records.secrets import quote

POSITIVE_SCORE = 7  # official CUT code: a judgment scored >= 7 is satisfactory
# What `train` writes into its output directory. It replaces the whole directory, so it takes
# only a new or empty one or an earlier train's output: a mistyped --out deletes nothing.
OUT_MARKER = ".alignloop-adapter"
OUT_MARKER_TEXT = "Written by `alignloop train`, which replaces this directory when it is given it as --out again.\n"
OUT_FILES = (WEIGHTS, CONFIG, "train_metrics.json", OUT_MARKER)


def load_examples(path: str | Path) -> list[Example]:
    path = Path(path)
    if path.is_dir():
        dirs = [path] if (path / "samples.jsonl").exists() else sorted(path.glob("iter-*"))
        if not dirs:
            raise DataError(f"{path}: not an alignloop run or iteration directory (no samples.jsonl, no iter-*/)")
        return [e for d in dirs for e in _iteration_examples(d)]
    if not path.is_file():
        raise DataError(f"{path}: no such file (pass --data a .jsonl file or a run directory)")
    examples, errors = [], []
    for lineno, line in enumerate(utf8_lines(path), start=1):
        if not line.strip():
            continue
        try:
            examples.append(_row_to_example(json.loads(line), f"{path}:{lineno}", lineno))
        except json.JSONDecodeError as e:
            errors.append(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})")
        except RecursionError:  # the decoder recurses once per level: ~1000 '[' end it
            errors.append(f"{path}:{lineno}: nested too deeply; {NESTING_HELP}")
        except DataError as e:
            errors.append(str(e))
    if errors:
        more = f"\n  ... and {len(errors) - 20} more" if len(errors) > 20 else ""
        raise DataError(f"{len(errors)} bad row(s):\n  " + "\n  ".join(errors[:20]) + more)
    if not examples:
        raise DataError(f"{path}: holds no examples")
    return examples


def _row_to_example(row, where: str, lineno: int) -> Example:
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object")
    if {"prompt", "sample", "judgment"} <= row.keys():
        try:
            return Example(
                Prompt.model_validate(row["prompt"]),
                Sample.model_validate(row["sample"]),
                Judgment.model_validate(row["judgment"]),
            )
        except ValueError as e:
            raise DataError(f"{where}: bad alignloop record: {e}") from None
    return _cut_row(row, where, lineno)


def _cut_row(row: dict, where: str, lineno: int) -> Example:
    missing = [k for k in ("instruction", "output") if k not in row]
    if missing or "judgment" not in row:
        need = ", ".join(f"`{k}`" for k in [*missing, *(["judgment"] if "judgment" not in row else [])])
        raise DataError(
            f"{where}: missing {need} (CUT rows need instruction, output, judgment; judgment null for positives)"
        )
    output, judgment, score = row["output"], row["judgment"], row.get("score")
    if not isinstance(output, str) or not output.strip():
        raise DataError(f"{where}: `output` must be a non-empty string")
    if judgment is not None and (not isinstance(judgment, str) or not judgment.strip()):
        raise DataError(f"{where}: `judgment` must be a non-empty string or null")
    if score is not None and not isinstance(score, (int, float)):
        raise DataError(f"{where}: `score` must be a number or absent")
    prompt = row_to_prompt(
        {k: row[k] for k in ("id", "instruction", "input", "system") if k in row},
        default_id=f"row-{lineno}",
        where=where,
    )
    positive = judgment is None or (score is not None and score >= POSITIVE_SCORE)
    sample = Sample(id=f"{prompt.id}#0", prompt_id=prompt.id, response=output, policy_version=0)
    return Example(
        prompt,
        sample,
        Judgment(
            sample_id=sample.id,
            verdict="positive" if positive else "negative",
            critique=judgment,
            score=float(score) if score is not None else None,
            judge="offline",
        ),
    )


def _iteration_examples(d: Path) -> list[Example]:
    """An iteration's judged samples. A run writes a judgment for every sample (a failed call
    too, with its error), so a sample without one, a judgment of no sample or a sample of no
    prompt means the directory is incomplete or was edited: refused, not skipped."""
    if not (d / "judgments.jsonl").is_file():
        raise DataError(
            f"{d}/judgments.jsonl: missing (was the iteration judged? a run stopped after sampling leaves "
            "none); resume the run to judge it, or pass --data the iteration directories that have one"
        )
    prompts = {p.id: p for p in read_records(d / "prompts.jsonl", Prompt)}
    samples = read_records(d / "samples.jsonl", Sample)
    judgments = {j.sample_id: j for j in read_records(d / "judgments.jsonl", Judgment)}
    sample_ids = {s.id for s in samples}
    _refuse_orphans(d, "samples.jsonl", "sample", [s.id for s in samples if s.id not in judgments], "no judgment")
    _refuse_orphans(
        d, "judgments.jsonl", "judgment of sample", [i for i in judgments if i not in sample_ids], "no sample"
    )
    _refuse_orphans(d, "samples.jsonl", "sample", [s.id for s in samples if s.prompt_id not in prompts], "no prompt")
    return [Example(prompts[s.prompt_id], s, judgments[s.id]) for s in samples if judgments[s.id].has_signal]


def _refuse_orphans(d: Path, file: str, what: str, ids: list[str], lacking: str) -> None:
    if ids:
        more = f" and {len(ids) - 1} more" if len(ids) > 1 else ""
        raise DataError(
            f"{d}/{file}: {what} {quote(ids[0], 60)}{more} with {lacking} in this iteration directory; "
            "it is incomplete or was edited (alignloop writes them together)"
        )


def train(cfg, data: str, out: str | None = None) -> dict:
    """Train the config's objective on `data` (learner.epochs passes) and save the adapter,
    which `alignloop run` can start from with `model.adapter: OUT`."""
    from alignloop.loop.progress import phase
    from alignloop.loop.store import atomic_write_dir, atomic_write_text
    from alignloop.policies.learner import Learner

    out_dir = Path(out or cfg.resolved_run_dir / "offline-adapter")
    check_out_dir(out_dir)  # before minutes of training
    examples = load_examples(data)
    model_preflight(cfg.model.path)  # before loading it: a mistyped path answers at once
    if cfg.model.adapter:
        preflight_adapter(cfg.model.adapter)
    learner = Learner(cfg.model, cfg.learner, cfg.sampler.temperature, cfg.seed)
    with phase("training", None, "step") as bar:  # one call: the count shows when it returns
        learned = learner.learn(examples, iteration=1)
        bar.update(learner.progress()[0])
    metrics = {"n_examples": len(examples), **learned, "data": str(data)}
    check_out_dir(out_dir)  # again: the directory may have changed while it trained
    atomic_write_dir(out_dir, {**learner.export().files(), OUT_MARKER: OUT_MARKER_TEXT.encode()})
    atomic_write_text(out_dir / "train_metrics.json", json.dumps(metrics, indent=2) + "\n")
    return {**metrics, "adapter": str(out_dir)}


def check_out_dir(out: Path) -> None:
    """Refuse an output directory that holds anything `train` did not write: it is replaced whole."""
    refuse_unsafe_dir(out, "--out", "pass --out a new directory for the adapter")
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        kind = "a symlink" if out.is_symlink() else "a file"
        raise ConfigError(f"--out {out}: is {kind}, not a directory; pass --out a new directory for the adapter")
    names = {p.name for p in out.iterdir()} if out.exists() else set()
    earlier = names <= set(OUT_FILES) and bool(names & {OUT_MARKER, "train_metrics.json"})
    if names and not earlier:
        found = sorted(names - set(OUT_FILES)) or sorted(names)
        shown = ", ".join(found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
        raise ConfigError(
            f"--out {out}: holds files alignloop train did not write ({shown}), and train replaces the "
            "whole directory; pass --out a new or empty directory, or move those files away"
        )
