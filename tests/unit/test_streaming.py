"""Judging overlapped with sampling (judging.streaming): the real cycle in-process on the tiny
model gives exactly the artifacts of one phase after the other, and the judges start while
the samplers are still at work."""

from __future__ import annotations

import asyncio

import pytest

from alignloop.loop.config import validate_config
from alignloop.loop.roles.judges import judge_queue
from alignloop.loop.roles.protocols import JudgeChunk
from alignloop.records import Judgment
from tests.conftest import tiny_config, write_prompts
from tests.helpers import artifacts, run_in_process

SLOW = {"type": "python", "target": "tests.judge_fakes:SlowRules", "options": {"delay_s": 0.2, "max_words": 4}}


def config(tmp_path, tiny_model, name: str, streaming: bool):
    # One prompt per sampler chunk and judge chunks of 2 samples: judge chunks straddle
    # sampler chunks, so a judge chunk waits for two of them.
    return validate_config(
        tiny_config(
            tiny_model,
            write_prompts(tmp_path / "p.jsonl"),
            tmp_path / name,
            iterations=2,
            judge=SLOW,
            sampler={"batch_size": 1, "samples_per_prompt": 3},
            judging={"actors": 2, "chunk_size": 2, "streaming": streaming},
        )
    )


def test_streaming_gives_the_artifacts_of_one_phase_after_the_other(tmp_path, tiny_model):
    streamed = run_in_process(config(tmp_path, tiny_model, "streamed", True))
    run_in_process(config(tmp_path, tiny_model, "sequential", False))
    a, b = artifacts(tmp_path / "streamed"), artifacts(tmp_path / "sequential")
    assert a["iters"].keys() == b["iters"].keys() == {"iter-0001", "iter-0002"}
    for name in a["iters"]:
        for key in ("prompts", "samples", "judgments", "adapter"):
            assert a["iters"][name][key] == b["iters"][name][key], f"{name}/{key} differs"
    assert a["state"]["adapter_checksum"] == b["state"]["adapter_checksum"]
    for m in streamed:  # the judges started before the last sample was drawn
        assert m["sample_judge_s"] - m["judge_s"] < m["sample_s"], m


class Recorder:
    """A judge handle whose chunks finish in a given order (a later index sooner)."""

    def __init__(self, fail: bool = False):
        self.fail, self.seen = fail, []

    @property
    def judge(self):
        async def call(prompts, samples):
            self.seen.append([s.id for s in samples])
            if self.fail:
                raise RuntimeError("actor died")
            await asyncio.sleep(0.01 * (5 - len(self.seen)))
            return [Judgment(sample_id=s.id, verdict="positive", score=1.0, judge="r") for s in samples]

        return type("M", (), {"remote": staticmethod(call)})


def chunk(i: int) -> JudgeChunk:
    from alignloop.records import Sample

    return JudgeChunk([None], [Sample(id=f"s{i}", prompt_id="p", response="x", policy_version=0)])


@pytest.mark.parametrize("fail_one", [False, True], ids=["all-live", "one-dies"])
def test_the_judge_queue_takes_chunks_as_they_arrive_and_returns_them_in_order(fail_one):
    handles = [Recorder(fail=fail_one), Recorder()]

    async def main():
        queue: asyncio.Queue = asyncio.Queue()
        task = asyncio.ensure_future(judge_queue(handles, queue, 4, 1, "r"))
        for i in (2, 0, 3, 1):  # out of order, with pauses, as sampler chunks finish
            queue.put_nowait((i, chunk(i)))
            await asyncio.sleep(0.02)
        return await task

    parts = asyncio.run(main())
    assert [p[0].sample_id for p in parts] == ["s0", "s1", "s2", "s3"]
    assert all(p[0].error is None for p in parts), "a dead actor's chunk is judged again on the live one"


def test_when_every_judge_actor_is_gone_the_chunks_still_to_come_are_error_judgments():
    async def main():
        queue: asyncio.Queue = asyncio.Queue()
        task = asyncio.ensure_future(judge_queue([Recorder(fail=True)], queue, 3, 2, "r"))
        for i in range(3):
            await asyncio.sleep(0.01)
            queue.put_nowait((i, chunk(i)))
        return await task

    parts = asyncio.run(main())
    assert [p[0].sample_id for p in parts] == ["s0", "s1", "s2"]
    assert all(p[0].error and "judge actor failed" in p[0].error for p in parts)
