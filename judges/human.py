"""People as judges: a review queue per iteration, judgments collected when people have made them.

`judge.type: human` makes the judge step write the iteration's review queue into the run
directory and stop the run (exit 8, "waiting for judgments") until people have judged it on
the review page (`alignloop review RUN`) or imported judgments made elsewhere; rerunning the
same command collects them and goes on. A mixed set-up names another judge (`other`): it
judges every sample once, people see a share of them (or those it is unsure about), and it
decides the rest; where both judged, the report shows how often they agree.

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
import math
import os
import re
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from alignloop.records import Judgment, Prompt, Sample, Span, merged_spans
from alignloop.records.secrets import quote

if TYPE_CHECKING:  # at run time judges/__init__.py resolves it through model_rebuild
    from alignloop.judges import JudgeConfig

REVIEWER = re.compile(r"[A-Za-z0-9._@-]{1,64}")
MAX_CRITIQUE = 20_000  # characters: a critique is a paragraph, not a document


class HumanJudgeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["human"] = "human"
    name: str = Field("human", description="Names the judge in messages; people's judgments read human:<reviewer>.")
    other: JudgeConfig | None = Field(
        None,
        description="A judge (rules, openai, ...) that judges every sample once: it decides the samples people "
        "do not see, and is the fallback (None: people judge every sample).",
    )
    share: float = Field(
        1.0, ge=0, le=1, description="Fraction of the samples people judge, picked by a hash of the sample id."
    )
    unsure: tuple[float, float] | None = Field(
        None,
        description="Instead of share: people judge the samples whose `other` score lies in [low, high], or that it "
        "could not judge; it decides the rest.",
    )
    quota: int | None = Field(
        None,
        gt=0,
        description="Go on once people have judged this many of an iteration's queued samples; the rest get the "
        "fallback (None: wait for all).",
    )
    deadline_hours: float | None = Field(
        None,
        ge=0,
        description="Hours after the queue was written after which the unjudged rest gets the fallback (None: no deadline).",
    )
    fallback: Literal["other", "unjudged"] = Field(
        "other",
        description="What samples past the quota or deadline get: the other judge's judgment, or none (unjudged: "
        "no signal, not trained on).",
    )

    @model_validator(mode="after")
    def _consistent(self) -> HumanJudgeConfig:
        if self.other is None and self.unsure is not None:
            raise ValueError("judge.unsure picks samples by the other judge's score: set judge.other")
        if self.other is None and (self.quota is not None or self.deadline_hours is not None):
            if self.fallback == "other":
                raise ValueError(
                    "judge.fallback is 'other' but judge.other is not set; set judge.other or judge.fallback: unjudged"
                )
        if self.other is not None and self.other.type == "human":
            raise ValueError("judge.other is the judge beside people: choose another type than human")
        if self.unsure is not None and self.unsure[0] > self.unsure[1]:
            raise ValueError(f"judge.unsure [{self.unsure[0]}, {self.unsure[1]}]: the low end is above the high end")
        return self


class HumanJudge:
    """What runs in the judge workers: the other judge (every sample once, so its judgments
    can be compared with people's), or no judgment at all. People's judgments are collected
    by the judge step from the run directory, not here."""

    def __init__(self, config: HumanJudgeConfig):
        from alignloop.judges import build_judge

        self.config, self.name = config, config.name
        self.other = build_judge(config.other) if config.other is not None else None

    async def judge(self, prompts: Sequence[Prompt], samples: Sequence[Sample]) -> list[Judgment]:
        if self.other is not None:
            return await self.other.judge(prompts, samples)
        return [Judgment(sample_id=s.id, judge=self.name) for s in samples]

    def usage(self) -> dict[str, float]:
        usage = getattr(self.other, "usage", None)
        return dict(usage()) if usage is not None else {}


class WaitingForJudgments(RuntimeError):
    """The judge step waits for people: the run stops (exit 8) and the same command resumes it."""

    def __init__(self, waiting: int, queued: int, where: Path):
        self.waiting, self.queued, self.where = waiting, queued, where
        super().__init__(
            f"{waiting} of {queued} queued sample(s) wait for people's judgments in {where}; judge them with "
            f"`alignloop review {where.parents[1]}` (or --import a JSONL file), then rerun this command"
        )


class ReviewError(ValueError):
    """A judgment that cannot be saved: bad fields, an unknown sample, a closed queue."""


class Conflict(ReviewError):
    """Someone saved the sample since the revision the saver saw."""

    def __init__(self, message: str, current: dict | None):
        super().__init__(message)
        self.current = current


def picked(sample_id: str, share: float) -> bool:
    """Whether people judge this sample: a share of the samples, the same ones on every rerun."""
    digest = hashlib.sha256(sample_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


def for_people(config: HumanJudgeConfig, samples: list[Sample], other: list[Judgment]) -> list[str]:
    """The ids of the samples people judge, in sample order."""
    if config.unsure is not None:
        low, high = config.unsure
        return [s.id for s, j in zip(samples, other) if not j.has_signal or j.score is None or low <= j.score <= high]
    return [s.id for s in samples if picked(s.id, config.share)]


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
        from alignloop.loop.store import atomic_write_text, make_dirs, write_jsonl

        ids = for_people(config, samples, other)
        if config.other is not None:
            write_jsonl(self.root / "other.jsonl", other)
        make_dirs(self.judgments_dir)
        queue = {"created": time.time(), "sample_ids": ids}
        atomic_write_text(self.queue_path, json.dumps(queue, indent=1) + "\n")
        return ids

    def load(self) -> dict:
        try:
            queue = json.loads(self.queue_path.read_text(encoding="utf-8"))
            if not isinstance(queue, dict) or not isinstance(queue.get("sample_ids"), list):
                raise ValueError("no sample_ids list")
            float(queue["created"])
            return queue
        except (OSError, ValueError, KeyError, TypeError) as e:
            from alignloop.loop.config import ConfigError

            raise ConfigError(f"{self.queue_path}: a damaged review queue ({type(e).__name__}: {e})") from None

    def other(self) -> dict[str, Judgment]:
        from alignloop.loop.store import read_jsonl

        path = self.root / "other.jsonl"
        return {j.sample_id: j for j in read_jsonl(path, Judgment)} if path.exists() else {}

    @property
    def closed(self) -> bool:
        """The judge step has collected this queue: later judgments would reach nothing."""
        return (self.iter_dir / "judgments.jsonl").exists()

    def samples(self) -> tuple[dict[str, Prompt], dict[str, Sample]]:
        from alignloop.loop.store import read_jsonl

        prompts = {p.id: p for p in read_jsonl(self.iter_dir / "prompts.jsonl", Prompt)}
        samples = {s.id: s for s in read_jsonl(self.iter_dir / "samples.jsonl", Sample)}
        return prompts, samples

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
                from alignloop.loop.config import ConfigError

                raise ConfigError(f"{path}: a damaged judgment file ({type(e).__name__})") from None
            if sid not in latest or rev > latest[sid]["rev"]:
                latest[sid] = record
        return latest

    def save(self, judgment: Judgment, reviewer: str, base_rev: int) -> dict:
        """Save `judgment` as revision base_rev + 1 of its sample (compare-and-set): Conflict
        when that revision exists, i.e. someone saved since the revision the caller saw."""
        from alignloop.loop.store import file_mode, make_dirs

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


# checking a judgment people made ----------------------------------------------------------------
class HumanInput(BaseModel):
    """A judgment as the page posts it or an import file holds it, one per line."""

    model_config = ConfigDict(extra="forbid")

    sample_id: str
    reviewer: str
    verdict: Literal["positive", "negative"] | None = None
    score: float | None = None
    critique: str | None = Field(None, max_length=MAX_CRITIQUE)
    spans: list[Span] | None = None
    base_rev: int = Field(0, ge=0)


def checked(raw: object, samples: dict[str, Sample]) -> tuple[Judgment, str, int]:
    """(judgment, reviewer, base revision) from a posted or imported object; ReviewError says
    what is wrong with it."""
    from pydantic import ValidationError

    if not isinstance(raw, dict):
        raise ReviewError(f"expected a JSON object, got {type(raw).__name__}")
    try:
        given = HumanInput.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "the object"
        raise ReviewError(f"{where}: {first['msg']}") from None
    if not REVIEWER.fullmatch(given.reviewer):
        raise ReviewError(f"reviewer {quote(given.reviewer)}: use 1-64 letters, digits and . _ @ -")
    sample = samples.get(given.sample_id)
    if sample is None:
        raise ReviewError(f"sample_id {quote(given.sample_id)} is not in the review queue")
    if given.verdict is None and given.score is None:
        raise ReviewError(f"{given.sample_id}: give a verdict or a score")
    if given.score is not None and not math.isfinite(given.score):
        raise ReviewError(f"{given.sample_id}: the score must be a finite number")
    for span in given.spans or ():
        if span.end > len(sample.response):
            raise ReviewError(
                f"{given.sample_id}: span [{span.start}, {span.end}) runs past the response ({len(sample.response)} characters)"
            )
    judgment = Judgment(
        sample_id=given.sample_id,
        verdict=given.verdict,
        score=given.score,
        critique=given.critique or None,
        judge=f"human:{given.reviewer}",
        spans=merged_spans(given.spans) if given.spans else None,
    )
    return judgment, given.reviewer, given.base_rev
