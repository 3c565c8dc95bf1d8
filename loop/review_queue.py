"""One iteration's review queue in the run directory, and the collection of people's judgments.

    iter-NNNN/review/queue.json         which samples wait for people, and since when
    iter-NNNN/review/other.jsonl        the other judge's judgments of every sample (if any)
    iter-NNNN/review/judgments/K.R.json revision R of a sample's judgment by people

A judgment file is never rewritten: revision R+1 is created beside R with a hard link that
fails if it exists, so two reviewers saving the same sample cannot both win (the second is
told who did) and a save killed half-way leaves only a hidden temporary file.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import TypeVar

from alignloop.judges.human import HumanJudgeConfig, ReviewError, for_people
from alignloop.loop.config import ConfigError
from alignloop.loop.store import atomic_write_text, file_mode, make_dirs, read_jsonl, write_jsonl
from alignloop.records import Judgment, Prompt, Sample

R = TypeVar("R", Prompt, Sample)


class WaitingForJudgments(RuntimeError):
    """The judge step waits for people: the run stops (exit 8) and the same command resumes it."""

    def __init__(self, waiting: int, queued: int, where: Path):
        self.waiting, self.queued, self.where = waiting, queued, where
        super().__init__(
            f"{waiting} of {queued} queued sample(s) wait for people's judgments in {where}; judge them with "
            f"`alignloop review {where.parents[1]}` (or --import a JSONL file), then rerun this command"
        )


class Conflict(ReviewError):
    """Someone saved the sample since the revision the saver saw."""

    def __init__(self, message: str, current: dict | None):
        super().__init__(message)
        self.current = current


def _key(sample_id: str) -> str:
    return hashlib.sha256(sample_id.encode("utf-8")).hexdigest()[:24]


class ReviewQueue:
    """One iteration's review queue (iter-NNNN/review)."""

    def __init__(self, iter_dir: Path):
        self.iter_dir = Path(iter_dir)
        self.root = self.iter_dir / "review"
        self.judgments_dir = self.root / "judgments"

    # the queue -------------------------------------------------------------------------------
    @property
    def queue_path(self) -> Path:
        return self.root / "queue.json"

    def exists(self) -> bool:
        return self.queue_path.exists()

    def write(self, config: HumanJudgeConfig, samples: list[Sample], other: list[Judgment]) -> list[str]:
        """Write the queue for `samples`; `other`: the other judge's judgments (one per sample).
        The queue file comes last: once it exists, everything it refers to does."""
        ids = for_people(config, samples, other)
        if config.other is not None:
            write_jsonl(self.root / "other.jsonl", other)
        make_dirs(self.judgments_dir)
        queue = {"created": time.time(), "sample_ids": ids}
        atomic_write_text(self.queue_path, json.dumps(queue, indent=1) + "\n")
        return ids

    def failed_other(self, samples: list[Sample]) -> list[Judgment] | None:
        """The other judge's judgments in sample order when it failed on a sample people do not
        judge (the error budget stopped the run): the rerun judges those again. None otherwise."""
        other, queued = self.other(), set(self.load()["sample_ids"])
        if not any(j.error for sid, j in other.items() if sid not in queued):
            return None
        return [other[s.id] for s in samples]

    def rewrite_other(self, other: list[Judgment]) -> None:
        write_jsonl(self.root / "other.jsonl", other)

    def load(self) -> dict:
        try:
            queue = json.loads(self.queue_path.read_text(encoding="utf-8"))
            if not isinstance(queue, dict) or not isinstance(queue.get("sample_ids"), list):
                raise ValueError("no sample_ids list")
            float(queue["created"])
            return queue
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"{self.queue_path}: a damaged review queue ({type(e).__name__}: {e})") from None

    def other(self) -> dict[str, Judgment]:
        path = self.root / "other.jsonl"
        return {j.sample_id: j for j in read_jsonl(path, Judgment)} if path.exists() else {}

    @property
    def closed(self) -> bool:
        """The judge step has collected this queue: later judgments would reach nothing."""
        return (self.iter_dir / "judgments.jsonl").exists()

    def samples(self) -> tuple[dict[str, Prompt], dict[str, Sample]]:
        """The iteration's prompts and samples by id; a missing or damaged file is a ConfigError naming it."""

        def read(name: str, cls: type[R]) -> list[R]:
            try:
                return read_jsonl(self.iter_dir / name, cls)
            except (OSError, ValueError) as e:  # a pydantic ValidationError is a ValueError
                raise ConfigError(f"{self.iter_dir / name}: cannot be read ({type(e).__name__})") from None

        prompts = {p.id: p for p in read("prompts.jsonl", Prompt)}
        return prompts, {s.id: s for s in read("samples.jsonl", Sample)}

    # people's judgments -----------------------------------------------------------------------
    def saved(self) -> dict[str, dict]:
        """The latest revision of each judged sample: {sample_id: record}."""
        latest: dict[str, dict] = {}
        if not self.judgments_dir.is_dir():
            return latest
        for path in sorted(self.judgments_dir.glob("*.json")):
            if path.name.startswith("."):
                continue  # a save that did not finish
            try:
                record = json.loads(path.read_text(encoding="utf-8"))
                sid, rev = record["judgment"]["sample_id"], int(record["rev"])
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise ConfigError(f"{path}: a damaged judgment file ({type(e).__name__})") from None
            if sid not in latest or rev > latest[sid]["rev"]:
                latest[sid] = record
        return latest

    def save(self, judgment: Judgment, reviewer: str, base_rev: int) -> dict:
        """Save `judgment` as revision base_rev + 1 of its sample (compare-and-set): Conflict
        when that revision exists, i.e. someone saved since the revision the caller saw."""
        if self.closed:
            raise ReviewError(f"iteration {self.iter_dir.name} has been collected; its judgments can no longer change")
        rev = base_rev + 1
        record = {"rev": rev, "reviewer": reviewer, "saved_at": time.time(), "judgment": judgment.model_dump()}
        target = self.judgments_dir / f"{_key(judgment.sample_id)}.{rev:06d}.json"
        make_dirs(self.judgments_dir)
        fd, tmp = tempfile.mkstemp(dir=self.judgments_dir, prefix=".", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(record, f)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, file_mode())
            try:
                os.link(tmp, target)  # atomic, and fails if another save made this revision first
            except FileExistsError:
                current = self.saved().get(judgment.sample_id)
                who = current["reviewer"] if current else "someone"
                raise Conflict(
                    f"{judgment.sample_id}: {who} saved revision {rev} first; reload to see it", current
                ) from None
        finally:
            Path(tmp).unlink(missing_ok=True)
        _fsync_dir(self.judgments_dir)
        return record

    # collection -----------------------------------------------------------------------------
    def collect(
        self, config: HumanJudgeConfig, samples: list[Sample], now: float | None = None
    ) -> tuple[list[Judgment], dict[str, float]]:
        """One judgment per sample, in sample order, and the review's metrics; raises
        WaitingForJudgments while queued samples wait and neither quota nor deadline is met."""
        queue, other, saved = self.load(), self.other(), self.saved()
        queued = set(queue["sample_ids"])
        done = [sid for sid in queue["sample_ids"] if sid in saved]
        waiting = len(queued) - len(done)
        quota_met = config.quota is not None and len(done) >= min(config.quota, len(queued))
        late = config.deadline_hours is not None and (now or time.time()) >= queue["created"] + 3600 * (
            config.deadline_hours
        )
        if waiting and not (quota_met or late):
            raise WaitingForJudgments(waiting, len(queued), self.root)

        def fallback(sample: Sample) -> Judgment:
            if config.fallback == "other" and sample.id in other:
                return other[sample.id]
            return Judgment(sample_id=sample.id, judge=config.name)

        def final(sample: Sample) -> Judgment:
            if sample.id not in queued:  # the other judge's to decide
                return other.get(sample.id) or Judgment(sample_id=sample.id, judge=config.name)
            if sample.id in saved:
                return Judgment.model_validate(saved[sample.id]["judgment"])
            return fallback(sample)

        judgments = [final(s) for s in samples]
        # n_given_fallback: queued samples past the quota or deadline, judged by the fallback (or not at all)
        metrics: dict[str, float] = {"n_queued_for_people": len(queued), "n_judged_by_people": len(done)}
        metrics["n_given_fallback"] = waiting
        return judgments, metrics


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
