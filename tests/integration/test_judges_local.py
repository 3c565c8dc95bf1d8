"""The embedded SmolLM2-135M as a local critique judge (about 50 s on a CPU): constrained
decoding turns its replies into judgments that parse."""

from __future__ import annotations

import pytest

from alignloop.judges import build_judge
from tests.helpers import judge_all, judge_config

pytestmark = pytest.mark.integration


def test_constrained_decoding_makes_the_embedded_model_a_judge_that_parses():
    """Unconstrained, SmolLM2-135M echoes the prompt's marker lines and no reply parses; inside
    the schema, every reply is a judgment (the parser's own content checks still apply)."""
    texts = ["Red, green and blue.", "I like turtles.", "The capital of France is Berlin.", "No."]
    base = {
        "type": "critique_model",
        "path": "smollm2-135m-instruct",
        "device": "cpu",
        "threads": 2,
        "max_new_tokens": 200,
        "batch_size": 4,
    }
    free = build_judge(judge_config({**base, "constrained": False, "max_new_tokens": 64}))
    _, unconstrained = judge_all(free, texts)
    assert len(unconstrained) == len(texts) and all(j.error for j in unconstrained), [j.critique for j in unconstrained]
    config = judge_config({**base, "max_critique_chars": 160})
    config.preflight()
    _, out = judge_all(build_judge(config), texts)
    assert len(out) == len(texts)
    for j in out:
        assert j.error is None or "placeholder" in j.error or "self-contradicting" in j.error, j.error
        assert j.error or (j.verdict in ("positive", "negative") and 0 <= j.score <= 1 and len(j.critique) <= 160)
    assert sum(j.error is None for j in out) >= 3
