"""A judge that reports, in its critique, the environment its actor runs in: which node it
is on and the variables a test asked about. For the cluster tests (a submitted job imports it
from the job's working dir)."""

from __future__ import annotations

import os

from alignloop.records import Judgment


class EnvJudge:
    def __init__(self, names: list[str]):
        self.names, self.name = names, "env"

    async def judge(self, prompts, samples):
        import ray

        seen = {n: os.environ.get(n) for n in self.names}
        seen["node_id"] = ray.get_runtime_context().get_node_id()
        critique = " ".join(f"{k}={v}" for k, v in sorted(seen.items()))
        return [
            Judgment(sample_id=s.id, judge=self.name, verdict="negative", score=0.0, critique=critique) for s in samples
        ]
