"""alignloop: online alignment rounds for language models (sample, judge, learn, publish).

The public Python API (loop/api.py):

    import alignloop

    cfg = alignloop.load_config("configs/quickstart.yaml", overrides=["iterations=2"])
    alignloop.run(cfg, resume=True)
    alignloop.read_run(cfg.resolved_run_dir).metrics

A judge plugin imports its records from `alignloop.records` (`from alignloop.records import
Judgment`). The folders loop/, records/, judges/ and policies/ install as alignloop.loop,
alignloop.records, alignloop.judges and alignloop.policies.
"""

from alignloop.loop.api import (
    ConfigError,
    RoundResult,
    RunConfig,
    RunRecords,
    load_config,
    read_run,
    run,
    run_round,
    validate_config,
)
from alignloop.records import Judgment, Prompt, Sample, Span

__version__ = "0.1.0"
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
    "Judgment",
    "Prompt",
    "Sample",
    "Span",
    "__version__",
]
