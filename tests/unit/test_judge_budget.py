"""Budgets of a hosted judge (judges/budget.py): token buckets on a stand-in clock, the server's
rate-limit headers, requests in flight that halve under 429s and recover, and over real HTTP
against the fake server, the request rate read from the server's own log."""

from __future__ import annotations

import asyncio
import time

import pytest

from alignloop.judges.budget import AdaptiveSlots, EndpointLimits, TokenBucket, reset_seconds
from alignloop.judges.openai_judge import OpenAIJudge, OpenAIJudgeConfig
from tests.fake_openai_server import FakeOpenAIServer
from tests.judge_fakes import prompts_and_samples


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_allows_a_seconds_burst_then_the_rate():
    clock = Clock()
    bucket = TokenBucket(rate=2.0, clock=clock)  # 120 a minute: a burst of 2, then one per 0.5 s
    assert [bucket.reserve(1) for _ in range(5)] == [0.0, 0.0, 0.5, 1.0, 1.5]
    clock.now += 1.5  # the debt is paid off
    assert bucket.reserve(1) == 0.5  # nothing was saved up while in debt
    clock.now += 10
    assert bucket.reserve(2) == 0.0 and bucket.reserve(1) == 0.5, "refilled to the burst, no further"


def test_token_bucket_refunds_what_a_request_did_not_use_and_believes_the_server():
    clock = Clock()
    tokens = TokenBucket(rate=100.0, clock=clock)
    assert tokens.reserve(300) == pytest.approx(2.0)  # 100 in the bucket, 200 owed
    tokens.refund(250)  # the reply used 50 of the 300
    assert tokens.reserve(50) == 0.0
    tokens.at_most(0)  # the server says none are left
    assert tokens.reserve(10) == pytest.approx(0.1)


@pytest.mark.parametrize(
    "value, seconds",
    [("1s", 1.0), ("6m0s", 360.0), ("20ms", 0.02), ("1h2m3.5s", 3723.5), ("0.5", 0.5), ("", None), ("soon", None)],
)
def test_reset_header_forms(value, seconds):
    assert reset_seconds(value) == (pytest.approx(seconds) if seconds is not None else None)


def test_reset_as_a_unix_time():
    assert 4.0 < reset_seconds(str(time.time() + 5)) <= 5.0


def test_nothing_left_pauses_the_endpoint_until_the_reset_and_a_wrong_header_not_for_hours():
    clock = Clock()
    limits = EndpointLimits(requests_per_minute=600, tokens_per_minute=None, clock=clock)
    limits.observe({"x-ratelimit-remaining-requests": "3", "x-ratelimit-reset-requests": "2s"}, 60)
    assert limits.paused_until == 0.0 and limits.requests.reserve(3) == 0.0
    assert limits.requests.reserve(1) == pytest.approx(0.1), "the server's 3 left capped our 10"
    limits.observe({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "250ms"}, 60)
    assert limits.paused_until == pytest.approx(100.25)
    limits.observe({"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "90h"}, 60)
    assert limits.paused_until == pytest.approx(160.0)
    limits.observe({"x-ratelimit-remaining-requests": "many"}, 60)  # unreadable: ignored
    assert limits.paused_until == pytest.approx(160.0)


def test_in_flight_limit_halves_once_per_round_of_429s_and_recovers_additively():
    slots = AdaptiveSlots(ceiling=8)
    epoch = slots.epoch
    for _ in range(6):  # six requests sent together, all throttled: one signal
        slots.throttled(epoch)
    assert slots.limit == 4.0
    slots.throttled(slots.epoch)  # a request sent after that decrease
    assert slots.limit == 2.0
    for _ in range(3):
        slots.throttled(slots.epoch)
    assert slots.limit == 1.0, "never below one request in flight"
    for _ in range(2):
        slots.succeeded()
    assert slots.limit == pytest.approx(2.5)  # +1, then +1/2
    for _ in range(200):
        slots.succeeded()
    assert slots.limit == 8.0, "back to the configured concurrency, not past it"
    fixed = AdaptiveSlots(ceiling=8, adaptive=False)
    fixed.throttled(fixed.epoch)
    assert fixed.limit == 8.0


def test_in_flight_slots_wait_for_the_limit():
    async def go():
        slots = AdaptiveSlots(ceiling=4)
        slots.bind()
        slots.throttled(slots.epoch)  # limit 2
        held = [await slots.acquire(), await slots.acquire()]
        third = asyncio.ensure_future(slots.acquire())
        await asyncio.sleep(0)
        assert not third.done() and slots.in_flight == 2
        await slots.release()
        await third
        assert slots.in_flight == 2 and len(held) == 2

    asyncio.run(go())


# over HTTP --------------------------------------------------------------------------------------


def config(server, **over) -> OpenAIJudgeConfig:
    base = dict(
        model="judge-model",
        base_url=server.url,
        api_key_env=None,
        cache=False,
        timeout_s=5.0,
        max_retries=3,
        backoff_base_s=0.01,
        backoff_max_s=0.05,
        concurrency=8,
    )
    return OpenAIJudgeConfig(**{**base, **over})


def judge_all(judge, n: int):
    prompts, samples = prompts_and_samples([f"good answer {i}" for i in range(n)])
    by_id = {p.id: p for p in prompts}
    return asyncio.run(judge.judge([by_id[s.prompt_id] for s in samples], samples))


def most_in_any_window(times: list[float], window_s: float) -> int:
    times = sorted(times)
    return max(sum(t <= u < t + window_s for u in times) for t in times)


def test_requests_per_minute_hold_by_the_servers_clock():
    """600 requests a minute (10 a second, a burst of 10), 30 samples, 8 in flight: by the
    arrival times the server logged, no second holds more than the burst and a second's rate,
    and the 20 past the burst are spread over at least 2 s. The same run without the limit
    packs them closer, so the check can fail."""
    with FakeOpenAIServer() as server:
        out = judge_all(OpenAIJudge(config(server, requests_per_minute=600)), 30)
        times = [e.at for e in server.log]
    assert all(j.error is None for j in out) and len(times) == 30
    assert most_in_any_window(times, 1.0) <= 10 + 10 + 1  # + 1: a grant at the window's edge
    assert max(times) - min(times) >= (30 - 10) / 10 - 0.3  # - 0.3: the first request's connection set-up

    with FakeOpenAIServer() as server:
        judge_all(OpenAIJudge(config(server)), 30)
        unlimited = [e.at for e in server.log]
    assert most_in_any_window(unlimited, 1.0) > 21, "without the limit the requests come faster"


def test_a_429_storm_with_rate_limit_headers_is_waited_out(monkeypatch):
    """The server answers 4 requests per 0.25 s window and throttles the rest with
    x-ratelimit-* headers (no Retry-After). The judge, told no limit of its own, pauses every
    request until the window resets and halves its requests in flight, so all 24 samples are
    judged within 3 retries, and no window sees more than the limit plus the requests already
    in flight. Deaf to the headers, the same judge storms the server and gives up on samples."""
    with FakeOpenAIServer(rate_limit=(4, 0.25)) as server:
        judge = OpenAIJudge(config(server))
        out = judge_all(judge, 24)
        windows, faults = server.windows(), [e.fault for e in server.log]
    assert [j.error for j in out] == [None] * 24
    assert faults.count("ok") == 24 and "ratelimit" in faults
    assert max(windows.values()) <= 4 + 8, windows
    assert judge._slots.epoch > 0, "the 429s lowered the requests in flight"
    assert judge.usage()["transport_faults"] == faults.count("ratelimit")

    monkeypatch.setattr(EndpointLimits, "observe", lambda self, headers, max_wait_s: None)
    with FakeOpenAIServer(rate_limit=(4, 0.25)) as server:
        deaf = judge_all(OpenAIJudge(config(server, adaptive_concurrency=False)), 24)
        storm = server.windows()
    assert any(j.error for j in deaf) and max(storm.values()) > 4 + 8


# the cost cap ------------------------------------------------------------------------------------


def write_sampled(steps, i: int, prompts, samples) -> None:
    """What the sample step leaves behind: its files, then state.json saying it finished."""
    steps.store.save_samples(i, prompts, samples)
    steps.save(i, "sample", {"n_samples": len(samples)})


def judge_step(steps):
    i, first = steps.state.next_step()
    return steps.sampled_and_judged(i, first, steps.state.cursor.pending or {})


PRICES = dict(price_input_per_mtok=1.0, price_output_per_mtok=1.0)  # a request of ~160 tokens: ~$0.00016


def cost_of(server) -> float:
    return (server.tokens[0] + server.tokens[1]) / 1e6


def test_a_cost_cap_hit_mid_iteration_stops_before_spending_more_then_resumes(tmp_path):
    """40 samples would cost ~$0.0065; the iteration may spend $0.006, and a request reserves
    the most it could cost (~$0.002) before it is sent. The step stops (exit 3, resumable)
    with the judged samples saved and the rest never sent; the spend stays under the cap.
    Resumed with a higher cap, only the samples not sent are judged, and the iteration's
    metrics count what both attempts spent."""
    from alignloop.loop.steps import JudgeCostCap
    from tests.judge_fakes import make_steps

    texts = [f"good answer {i}" for i in range(40)]
    prompts, samples = prompts_and_samples(texts)
    with FakeOpenAIServer() as server:
        judge = config(server, concurrency=4, **PRICES).model_dump()
        steps = make_steps(judge, tmp_path, actors=1, chunk_size=40, max_cost_usd_per_iteration=0.006)
        write_sampled(steps, 1, prompts, samples)
        with pytest.raises(JudgeCostCap, match=r"cost cap \(judging.max_cost_usd_per_iteration 0.006\)") as stop:
            judge_step(steps)
        saved = steps.store.load_judgments(1)
        judged = [j for j in saved if j.error is None]
        capped = [j for j in saved if j.error and j.error.startswith("judge cost cap reached")]
        assert len(judged) + len(capped) == 40 and 0 < len(judged) < 40
        assert server.requests == len(judged), "no sample past the cap was sent"
        assert cost_of(server) <= 0.006
        assert f"{len(capped)}/40 sample(s) were not sent" in str(stop.value) and "--resume" in str(stop.value)
        state = steps.store.load_state()
        assert state.step == "sample" and state.cursor.pending["judge_cost_usd"] == pytest.approx(cost_of(server))

        resumed = make_steps(judge, tmp_path, actors=1, chunk_size=40, max_cost_usd_per_iteration=1.0)
        out = judge_step(resumed)
    assert [j.error for j in out.judgments] == [None] * 40 and server.requests == 40
    assert out.metrics["n_rejudged"] == len(capped)
    assert out.metrics["judge_cost_usd"] == pytest.approx(cost_of(server)), "both attempts' spending"
    assert resumed.store.load_state().step == "judge"


def test_the_runs_cap_counts_earlier_iterations_and_stops_before_the_first_request(tmp_path):
    from alignloop.loop.steps import JudgeCostCap
    from tests.judge_fakes import make_steps

    prompts, samples = prompts_and_samples(["good one", "good two"])
    with FakeOpenAIServer() as server:
        judge = config(server, **PRICES).model_dump()
        steps = make_steps(judge, tmp_path, actors=2, chunk_size=1, max_cost_usd=0.01)
        steps.store.write_metrics(1, {"iteration": 1, "judge_cost_usd": 0.0095})  # $0.0005 left: less than a request
        write_sampled(steps, 2, prompts, samples)
        with pytest.raises(JudgeCostCap, match="judging.max_cost_usd 0.01"):
            judge_step(steps)
        assert server.requests == 0
        # The workers' limit is lifted after the step: an eval gate judging with them is not capped.
        (j,) = steps.roles.judges.judge(steps_chunks(steps, prompts, samples[:1]))[0][0]
        assert j.error is None and server.requests == 1


def steps_chunks(steps, prompts, samples):
    from alignloop.loop.steps import judge_chunks

    return judge_chunks(steps.cfg, prompts, samples)


def test_the_rounds_json_line_and_series_file_carry_what_its_judges_spent(tmp_path):
    from alignloop.loop.config import validate_config
    from alignloop.loop.series import Round, RoundEntry, Series
    from alignloop.loop.store import RunStore
    from alignloop.policies.adapter import AdapterPayload

    cfg = validate_config(
        {
            "name": "t",
            "iterations": 2,
            "data": {"path": "p.jsonl"},
            "judge": {"type": "rules", "checks": [{"type": "finished"}]},
        }
    )
    series = Series(tmp_path)
    rnd = Round(series, cfg, RoundEntry(id="r1"))
    (RunStore(rnd.dir).iter_dir(2) / "adapter").mkdir(parents=True)
    payload = AdapterPayload.create(2, b"weights", {"r": 8})
    metrics = [{"iteration": 1, "judge_cost_usd": 0.25}, {"iteration": 2, "judge_cost_usd": 0.5}, {"iteration": 3}]
    line = rnd.finish(payload, metrics, None, None).summary()
    assert line["judge_cost_usd"] == pytest.approx(0.75)
    assert series.get("r1").train["judge_cost_usd"] == pytest.approx(0.75), "series.json reads it back"


def test_the_runs_cap_counts_iterations_judged_ahead_of_the_learner(tmp_path):
    """Sampling ahead, iteration 1 is judged but not yet learned: its spend is not in
    metrics.jsonl, and still counts against the run's cap when iteration 2 is judged."""
    from alignloop.loop.cursor import AheadStep
    from alignloop.loop.steps import JudgeCostCap
    from tests.judge_fakes import make_steps

    prompts, samples = prompts_and_samples(["good one", "good two"])
    with FakeOpenAIServer() as server:
        judge = config(server, **PRICES).model_dump()
        steps = make_steps(judge, tmp_path, actors=1, chunk_size=2, max_cost_usd=0.01)
        steps.ahead = True
        steps.state.cursor.ahead = {1: AheadStep("judge", {"judge_cost_usd": 0.0095})}
        steps.store.save_samples(2, prompts, samples)
        with pytest.raises(JudgeCostCap):
            steps.judge(2, prompts, samples, {})
        assert server.requests == 0
        steps.state.cursor.ahead = {1: AheadStep("judge", {"judge_cost_usd": 0.001})}
        assert all(j.error is None for j in steps.judge(2, prompts, samples, {}).judgments)


@pytest.mark.parametrize(
    "judge, why",
    [
        ({"type": "rules", "checks": [{"type": "finished"}]}, "judge.type 'rules' would not be held to it"),
        ({"type": "openai", "model": "m", "api_key_env": None}, "set judge.price_input_per_mtok"),
    ],
)
def test_a_cost_cap_the_judge_cannot_keep_is_refused_at_load(judge, why):
    from alignloop.loop.config import ConfigError, validate_config

    raw = {"name": "t", "data": {"path": "p.jsonl"}, "judge": judge, "judging": {"max_cost_usd_per_iteration": 1}}
    with pytest.raises(ConfigError, match=why):
        validate_config(raw)
