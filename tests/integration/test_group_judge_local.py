"""The embedded SmolLM2-135M as a group critique judge (about a minute on a CPU): constrained
to the group schema, its one reply per prompt has an item for each response."""

from __future__ import annotations

import pytest

from alignloop.judges import build_judge
from alignloop.records import Message, Prompt, Sample
from tests.helpers import judge_config

pytestmark = pytest.mark.integration


def test_the_embedded_model_writes_a_group_judgment_that_parses():
    import asyncio

    prompt = Prompt(id="p", messages=[Message(role="user", content="Name the three primary colours of light.")])
    texts = ["Red, green and blue.", "I like turtles.", "Cyan, magenta and yellow."]
    samples = [Sample(id=f"s{n}", prompt_id="p", response=t, policy_version=0) for n, t in enumerate(texts)]
    config = judge_config(
        {
            "type": "critique_model",
            "path": "smollm2-135m-instruct",
            "device": "cpu",
            "threads": 2,
            "mode": "group",
            "max_new_tokens": 400,
            "max_critique_chars": 120,
        }
    )
    out = asyncio.run(build_judge(config).judge([prompt] * 3, samples))
    assert [j.sample_id for j in out] == ["s0", "s1", "s2"]
    # The schema fixes three items numbered 1..3, not that each number comes once: a repeated
    # number is an error for that sample, said as such, never a made-up verdict.
    for j in out:
        if j.error is None:
            assert j.verdict in ("positive", "negative") and 0 <= j.score <= 1 and len(j.critique) <= 120
        else:
            assert any(w in j.error for w in ("left out", "times", "placeholder", "self-contradicting")), j.error
    assert not any("unparseable" in (j.error or "") or "cut off" in (j.error or "") for j in out)
