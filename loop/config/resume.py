"""What a resumed run may change: a run directory's saved config against this one."""

from __future__ import annotations

from pydantic import ValidationError

from alignloop.loop.config.redaction import redact
from alignloop.loop.config.schema import RunConfig

# Fields that may change when a run is resumed: how long it runs, where Ray lives, where metrics go.
RESUMABLE_CHANGES = ("iterations", "ray", "tracking")
# Where actors run and how many there are may change on resume (a node is gone; the cluster
# grew), and whether judging overlaps sampling: the chunks are seeded by their content and
# judged in the same groups either way, so none of these changes a result.
PLACEMENT_FIELDS = {
    "sampler": ("replicas", "num_cpus", "num_gpus", "resources"),
    "judging": ("actors", "in_flight", "num_cpus", "num_gpus", "resources", "streaming"),
    "learner": ("num_cpus", "num_gpus", "resources", "placement"),
}
# learner.ranks and learner.shard_base are not among them: N ranks sum each step's gradients in
# another order than one learner, equal within 1e-5 but not bit for bit, and a resumed run
# must end with the artifacts of an uninterrupted one.


def resume_conflicts(saved: dict, config: RunConfig) -> list[str]:
    """Fields that differ between a run directory's config and this one, other than the
    ones a resumed run may change."""
    new = redact(config.model_dump(mode="json"))
    try:
        # Read the saved config with today's schema, so a field added since the run started
        # (saved without it) compares as its default instead of as a change.
        saved = redact(RunConfig.model_validate(saved).model_dump(mode="json"))
    except ValidationError:
        pass  # a config this version cannot read: compare as saved, field by field
    conflicts = []
    for k in sorted(set(saved) | set(new)):
        before, now = without_placement(k, saved.get(k)), without_placement(k, new.get(k))
        if k in RESUMABLE_CHANGES or before == now:
            continue
        if isinstance(before, dict) and isinstance(now, dict):  # name the field, not just its section
            conflicts += [f"{k}.{f}" for f in sorted(set(before) | set(now)) if before.get(f) != now.get(f)]
        else:
            conflicts.append(k)
    return conflicts


def without_placement(section: str, value):
    if not isinstance(value, dict) or section not in PLACEMENT_FIELDS:
        return value
    return {k: v for k, v in value.items() if k not in PLACEMENT_FIELDS[section]}
