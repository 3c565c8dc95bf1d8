"""Per-iteration metrics computed from the records (what metrics.json and the summary line hold)."""

from __future__ import annotations

from alignloop.records import Judgment, Sample


def sample_metrics(samples: list[Sample]) -> dict:
    return {
        "n_samples": len(samples),
        "tokens_sampled": sum(len(s.token_ids or ()) for s in samples),
        "finished_rate": sum(s.finish_reason == "stop" for s in samples) / len(samples),
        "policy_version": samples[0].policy_version,
    }


def judgment_metrics(judgments: list[Judgment]) -> dict:
    verdicts = [j.verdict for j in judgments if j.error is None and j.verdict is not None]
    scores = [j.score for j in judgments if j.error is None and j.score is not None]
    errors = sum(j.error is not None for j in judgments)
    negatives = [j for j in judgments if j.error is None and j.verdict == "negative"]
    latencies = [j.latency_s for j in judgments if j.error is None]
    return {
        "pass_rate": sum(v == "positive" for v in verdicts) / len(verdicts) if verdicts else None,
        "mean_score": sum(scores) / len(scores) if scores else None,
        "n_judged": len(judgments) - errors,
        "n_judge_errors": errors,
        "judge_error_rate": errors / max(1, len(judgments)),
        # mean seconds per judgment as the judge reported it (a batch call's time, per sample)
        "judge_latency_s": sum(latencies) / len(latencies) if latencies else None,
        # where the judge located the faults (CUT's `detection: spans` trains on them); CUT's
        # own cut_negatives_with_spans counts only the negatives it trained on
        "judged_negatives_with_spans": sum(bool(j.spans) for j in negatives) / len(negatives) if negatives else None,
        "unlocated_quotes": sum(j.unlocated_quotes for j in judgments),
        **criterion_metrics(judgments),
    }


def criterion_metrics(judgments: list[Judgment]) -> dict:
    """A rubric judge's criteria, each tracked on its own: pass rate and mean score per
    criterion (none for judges without criteria, so their metrics are as before)."""
    out: dict = {}
    parts = [c for j in judgments if j.error is None for c in j.criteria or ()]
    for name in dict.fromkeys(c.name for c in parts):
        mine = [c for c in parts if c.name == name]
        scores = [c.score for c in mine if c.score is not None]
        out[f"criterion_{name}_pass_rate"] = sum(c.verdict == "positive" for c in mine) / len(mine)
        out[f"criterion_{name}_mean_score"] = sum(scores) / len(scores) if scores else None
    return out


def is_spending(key: str) -> bool:
    """What a judge step spends (its time, and the judges' requests, tokens, cost ...): summed
    over the attempts of one iteration's judge step, unlike the rates computed from judgments."""
    return key.startswith("judge_") and key not in ("judge_error_rate", "judge_latency_s")
