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

from alignloop.loop import api
from alignloop.loop.api import *  # noqa: F403 - the public API is api.__all__
from alignloop.records import Judgment, Prompt, Sample, Span

__version__ = "0.1.0"
__all__ = [*api.__all__, "Judgment", "Prompt", "Sample", "Span", "__version__"]
