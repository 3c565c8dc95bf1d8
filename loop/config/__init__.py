"""The run config: its schema (schema.py), loading a YAML file (load.py) with dotted `--set`
overrides (overrides.py), error messages that name the field (errors.py), secrets masked in
what is saved and printed (redaction.py), and what a resumed run may change (resume.py).

Everything other modules use is importable from here, `from alignloop.loop.config import ...`.
Nothing here imports torch or Ray, so `--dry-run` and config errors answer at once.
"""

from alignloop.loop.config.errors import ConfigError, format_error
from alignloop.loop.config.load import load_config, validate_config
from alignloop.loop.config.overrides import apply_override
from alignloop.loop.config.redaction import redact, to_yaml
from alignloop.loop.config.resume import PLACEMENT_FIELDS, RESUMABLE_CHANGES, resume_conflicts, without_placement
from alignloop.loop.config.schema import (
    BUILTIN_RESOURCES,
    RESOURCES_HELP,
    AsyncConfig,
    DataConfig,
    EvalConfig,
    JudgingConfig,
    LearnerConfig,
    LoraOptions,
    MlflowOptions,
    ModelConfig,
    RayConfig,
    Resources,
    RoundConfig,
    RunConfig,
    SamplerConfig,
    Strict,
    TrackingConfig,
    WandbOptions,
)

__all__ = [
    "AsyncConfig",
    "BUILTIN_RESOURCES",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "JudgingConfig",
    "LearnerConfig",
    "LoraOptions",
    "MlflowOptions",
    "ModelConfig",
    "PLACEMENT_FIELDS",
    "RESOURCES_HELP",
    "RESUMABLE_CHANGES",
    "RayConfig",
    "Resources",
    "RoundConfig",
    "RunConfig",
    "SamplerConfig",
    "Strict",
    "TrackingConfig",
    "WandbOptions",
    "apply_override",
    "format_error",
    "load_config",
    "redact",
    "resume_conflicts",
    "to_yaml",
    "validate_config",
    "without_placement",
]
