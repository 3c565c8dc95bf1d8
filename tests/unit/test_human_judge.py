"""People as judges (judges/human.py): the review queue, compare-and-set saves, collection with
a quota or a deadline, and a run that stops waiting for people and resumes where it stopped."""

from __future__ import annotations

import json
import threading
import time
import urllib.request

import pytest

from alignloop.judges.human import HumanJudgeConfig, ReviewError, checked, for_people
from alignloop.loop.config import ConfigError, validate_config
from alignloop.loop.review_queue import Conflict, ReviewQueue, WaitingForJudgments
from alignloop.loop.store import write_jsonl
from alignloop.records import Judgment, Message, Prompt, Sample, Span
from tests.conftest import tiny_config, write_prompts
from tests.helpers import artifacts, run_in_process

RULES = {"type": "rules", "checks": [{"type": "max_words", "limit": 4}]}


def human(**over) -> HumanJudgeConfig:
    return validate_config({"name": "t", "data": {"path": "p.jsonl"}, "judge": {"type": "human", **over}}).judge


def iteration(tmp_path, n=6):
    """An iteration directory with n samples of one prompt, as the sample step writes it."""
    prompts = [Prompt(id="p0", messages=[Message(role="user", content="say hi")])]
    samples = [
        Sample(id=f"s{k}", prompt_id="p0", response=f"hello there number {k}", policy_version=0) for k in range(n)
    ]
    d = tmp_path / "run" / "iter-0001"
    write_jsonl(d / "prompts.jsonl", prompts)
    write_jsonl(d / "samples.jsonl", samples)
    return d, samples


def machine(samples, score=1.0):
    return [Judgment(sample_id=s.id, verdict="positive", score=score, judge="rules") for s in samples]


def verdict(sample_id, reviewer="alice", **over):
    return Judgment(
        sample_id=sample_id, verdict="negative", score=0.0, critique="wrong", judge=f"human:{reviewer}", **over
    )


# config -----------------------------------------------------------------------------------------
def test_config_refuses_what_cannot_work():
    with pytest.raises(ConfigError, match="set judge.other"):
        human(unsure=[0.2, 0.8])
    with pytest.raises(ConfigError, match="judge.fallback: unjudged"):
        human(quota=3)
    with pytest.raises(ConfigError, match="max_staleness: 0"):
        validate_config(
            {"name": "t", "data": {"path": "p"}, "judge": {"type": "human"}, "asynchronous": {"max_staleness": 1}}
        )
    assert human(quota=3, fallback="unjudged").quota == 3
    assert human(other=RULES, share=0.5).other.type == "rules"


def test_a_share_picks_the_same_samples_every_time_and_unsure_picks_by_score():
    samples = [Sample(id=f"s{k}", prompt_id="p", response="x", policy_version=0) for k in range(200)]
    half = for_people(human(other=RULES, share=0.5), samples, machine(samples))
    assert half == for_people(human(other=RULES, share=0.5), samples, machine(samples))
    assert 60 < len(half) < 140 and half == sorted(half, key=lambda s: int(s[1:]))
    assert len(for_people(human(), samples, machine(samples))) == 200
    scored = [Judgment(sample_id=s.id, score=k / 199, judge="rules") for k, s in enumerate(samples)]
    scored[0] = Judgment(sample_id="s0", judge="rules", error="timeout")
    unsure = for_people(human(other=RULES, unsure=[0.4, 0.6]), samples, scored)
    assert "s0" in unsure and all(s == "s0" or 0.4 <= int(s[1:]) / 199 <= 0.6 for s in unsure)


# queue and collection ---------------------------------------------------------------------------
def test_collect_waits_then_returns_peoples_judgments_in_sample_order(tmp_path):
    d, samples = iteration(tmp_path)
    config = human(other=RULES, share=0.5)
    queue = ReviewQueue(d)
    queued = queue.write(config, samples, machine(samples))
    assert queued and len(queued) < len(samples)  # a mixed iteration: some for people, the rest for the rules
    with pytest.raises(WaitingForJudgments) as waiting:
        queue.collect(config, samples)
    assert waiting.value.waiting == len(queued) and str(d / "review") in str(waiting.value)
    for sid in queued:
        queue.save(verdict(sid, spans=[Span(start=0, end=5, reason="greeting")]), "alice", 0)
    judgments, metrics = queue.collect(config, samples)
    assert [j.sample_id for j in judgments] == [s.id for s in samples]
    for j in judgments:
        assert j.judge == ("human:alice" if j.sample_id in queued else "rules")
    assert judgments[[s.id for s in samples].index(queued[0])].spans == [Span(start=0, end=5, reason="greeting")]
    assert metrics == {"n_queued_for_people": len(queued), "n_judged_by_people": len(queued), "n_given_fallback": 0}


def test_a_later_revision_wins_and_a_stale_one_is_refused(tmp_path):
    d, samples = iteration(tmp_path)
    queue = ReviewQueue(d)
    queue.write(human(), samples, machine(samples))
    queue.save(verdict("s1"), "alice", 0)
    with pytest.raises(Conflict, match="alice saved revision 1 first") as conflict:
        queue.save(verdict("s1", reviewer="bob"), "bob", 0)
    assert conflict.value.current["reviewer"] == "alice"
    queue.save(Judgment(sample_id="s1", verdict="positive", judge="human:bob"), "bob", 1)
    assert queue.saved()["s1"]["rev"] == 2 and queue.saved()["s1"]["judgment"]["verdict"] == "positive"
    assert not list((d / "review" / "judgments").glob(".*")), "no temporary file is left behind"


def test_two_reviewers_saving_at_once_never_lose_or_double_a_judgment(tmp_path):
    d, samples = iteration(tmp_path, n=20)
    queue = ReviewQueue(d)
    queue.write(human(), samples, machine(samples))
    start, outcomes = threading.Barrier(8), []

    def reviewer(name: str) -> None:
        start.wait()
        for s in samples:  # every reviewer tries every sample, from revision 0
            try:
                queue.save(verdict(s.id, reviewer=name), name, 0)
                outcomes.append((s.id, name))
            except Conflict:
                pass

    threads = [threading.Thread(target=reviewer, args=(f"r{k}",)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    saved = queue.saved()
    assert sorted(sid for sid, _ in outcomes) == sorted(s.id for s in samples)  # one winner per sample
    assert {sid: saved[sid]["reviewer"] for sid in saved} == dict(outcomes)
    assert len(list((d / "review" / "judgments").glob("*.json"))) == 20


def test_a_save_killed_before_it_lands_leaves_nothing(tmp_path, monkeypatch):
    d, samples = iteration(tmp_path)
    queue = ReviewQueue(d)
    queue.write(human(), samples, machine(samples))

    def killed(*args):
        raise KeyboardInterrupt  # the process stops between writing and linking

    monkeypatch.setattr("os.link", killed)
    with pytest.raises(KeyboardInterrupt):
        queue.save(verdict("s0"), "alice", 0)
    monkeypatch.undo()
    assert queue.saved() == {} and not list((d / "review" / "judgments").iterdir())
    queue.save(verdict("s0"), "alice", 0)
    assert queue.saved()["s0"]["rev"] == 1


def test_quota_and_deadline_hand_the_rest_to_the_fallback(tmp_path):
    d, samples = iteration(tmp_path)
    queue = ReviewQueue(d)
    queue.write(human(other=RULES, quota=2), samples, machine(samples, score=0.5))
    queue.save(verdict("s0"), "alice", 0)
    with pytest.raises(WaitingForJudgments):
        queue.collect(human(other=RULES, quota=2), samples)
    queue.save(verdict("s3", reviewer="bob"), "bob", 0)
    judgments, metrics = queue.collect(human(other=RULES, quota=2), samples)
    assert [j.judge for j in judgments] == ["human:alice", "rules", "rules", "human:bob", "rules", "rules"]
    assert metrics["n_given_fallback"] == 4
    unjudged, _ = queue.collect(human(quota=2, fallback="unjudged"), samples)
    assert [j.has_signal for j in unjudged] == [True, False, False, True, False, False]
    late = human(other=RULES, deadline_hours=1)
    with pytest.raises(WaitingForJudgments):
        queue.collect(late, samples)
    judgments, _ = queue.collect(late, samples, now=time.time() + 3601)
    assert [j.judge for j in judgments] == ["human:alice", "rules", "rules", "human:bob", "rules", "rules"]


def test_a_collected_queue_takes_no_more_judgments(tmp_path):
    d, samples = iteration(tmp_path)
    queue = ReviewQueue(d)
    queue.write(human(), samples, machine(samples))
    write_jsonl(d / "judgments.jsonl", machine(samples))
    with pytest.raises(ReviewError, match="has been collected"):
        queue.save(verdict("s0"), "alice", 0)


def test_a_damaged_judgment_file_is_named(tmp_path):
    d, samples = iteration(tmp_path)
    queue = ReviewQueue(d)
    queue.write(human(), samples, machine(samples))
    (d / "review" / "judgments" / "x.000001.json").write_text("{not json")
    with pytest.raises(ConfigError, match="x.000001.json: a damaged judgment file"):
        queue.saved()


@pytest.mark.parametrize(
    "raw, message",
    [
        ([1], "expected a JSON object"),
        ({"sample_id": "s0"}, "reviewer: Field required"),
        ({"sample_id": "s0", "reviewer": "a b", "verdict": "negative"}, "use 1-64 letters"),
        ({"sample_id": "nope", "reviewer": "a", "verdict": "negative"}, "is not in the review queue"),
        ({"sample_id": "s0", "reviewer": "a"}, "give a verdict or a score"),
        ({"sample_id": "s0", "reviewer": "a", "verdict": "bad"}, "verdict: Input should be"),
        ({"sample_id": "s0", "reviewer": "a", "score": float("nan")}, "finite number"),
        ({"sample_id": "s0", "reviewer": "a", "verdict": "negative", "spans": [{"start": 3, "end": 99}]}, "runs past"),
        ({"sample_id": "s0", "reviewer": "a", "verdict": "negative", "spans": [{"start": 5, "end": 2}]}, "before its"),
        ({"sample_id": "s0", "reviewer": "a", "verdict": "negative", "judge": "rules"}, "judge: Extra inputs"),
        ({"sample_id": "s0", "reviewer": "a", "score": 1, "critique": "x" * 20_001}, "critique: String should have"),
    ],
)
def test_bad_judgments_from_people_are_refused_saying_why(raw, message):
    samples = {"s0": Sample(id="s0", prompt_id="p", response="hello there", policy_version=0)}
    with pytest.raises(ReviewError, match=message):
        checked(raw, samples)


def test_a_good_judgment_records_its_reviewer():
    samples = {"s0": Sample(id="s0", prompt_id="p", response="hello there", policy_version=0)}
    raw = {"sample_id": "s0", "reviewer": "ann@x", "verdict": "negative", "critique": "rude", "base_rev": 2}
    raw["spans"] = [{"start": 6, "end": 11}, {"start": 0, "end": 5}]
    judgment, reviewer, base = checked(raw, samples)
    assert (judgment.judge, reviewer, base) == ("human:ann@x", "ann@x", 2)
    assert [(s.start, s.end) for s in judgment.spans] == [(0, 5), (6, 11)]


# a run that waits for people ----------------------------------------------------------------------
def judge_like_a_person(run_dir, reviewer="alice", bad_if=None) -> int:
    """Judge every queued, unjudged sample: long responses (or those `bad_if(queue, sample id)`
    says) are negative, with their first word marked faulty. Returns how many were judged."""
    n = 0
    for review in sorted(run_dir.glob("iter-*/review")):
        queue = ReviewQueue(review.parent)
        _, samples = queue.samples()
        saved = queue.saved()
        for sid in json.loads((review / "queue.json").read_text())["sample_ids"]:
            if sid in saved or queue.closed:
                continue
            words = samples[sid].response.split()
            bad = bad_if(queue, sid) if bad_if else len(words) > 4
            spans = [Span(start=0, end=len(words[0]), reason="rambles")] if bad and words else None
            critique = "It rambles on." if bad else None
            judgment = Judgment(
                sample_id=sid,
                verdict="negative" if bad else "positive",
                score=0.0 if bad else 1.0,
                critique=critique,
                spans=spans,
                judge=f"human:{reviewer}",
            )
            queue.save(judgment, reviewer, 0)
            n += 1
    return n


def people_config(tmp_path, tiny_model, name, **judge):
    cut = {"type": "cut", "detection": "spans"}
    raw = tiny_config(
        tiny_model,
        write_prompts(tmp_path / "p.jsonl"),
        tmp_path / name,
        judge={"type": "human", **judge},
        judging={"actors": 1},
        sampler={"replicas": 1},
        tracking={"backends": []},
    )
    raw["learner"]["objective"] = cut
    return validate_config(raw)


def test_a_run_stops_waiting_for_people_and_resumes_without_losing_anything(tmp_path, tiny_model):
    cfg = people_config(tmp_path, tiny_model, "people")
    run_dir = tmp_path / "people"
    with pytest.raises(WaitingForJudgments) as first:
        run_in_process(cfg)
    state = (run_dir / "state.json").read_bytes()
    assert json.loads(state)["step"] == "sample" and first.value.waiting == 12  # 4 prompts x 3 samples
    with pytest.raises(WaitingForJudgments):  # nothing judged yet: the rerun stops where it was
        run_in_process(cfg)
    assert (run_dir / "state.json").read_bytes() == state
    judge_like_a_person(run_dir)
    with pytest.raises(WaitingForJudgments) as second:  # iteration 1 done, iteration 2 waits
        run_in_process(cfg)
    assert "iter-0002" in str(second.value)
    judge_like_a_person(run_dir)
    metrics = run_in_process(cfg)
    assert [m["iteration"] for m in metrics] == [1, 2]
    assert any(m["n_negative"] for m in metrics), "people marked some responses faulty"
    for m in metrics:
        assert m["n_judged_by_people"] == 12 and m["n_judge_errors"] == 0
        if m["n_negative"]:  # CUT trained on people's spans
            assert m["cut_negatives_with_spans"] == 1.0
    judgments = [json.loads(line) for line in (run_dir / "iter-0001" / "judgments.jsonl").read_text().splitlines()]
    assert {j["judge"] for j in judgments} == {"human:alice"}

    # The same judgments made while the run waited at other moments give the same run.
    again = people_config(tmp_path, tiny_model, "again")
    with pytest.raises(WaitingForJudgments):
        run_in_process(again)
    judge_like_a_person(tmp_path / "again")
    with pytest.raises(WaitingForJudgments):
        run_in_process(again)
    with pytest.raises(WaitingForJudgments):
        run_in_process(again)
    judge_like_a_person(tmp_path / "again")
    run_in_process(again)
    a, b = artifacts(run_dir), artifacts(tmp_path / "again")
    assert a["iters"].keys() == b["iters"].keys() == {"iter-0001", "iter-0002"}
    for name in a["iters"]:
        for key in ("prompts", "samples", "judgments", "adapter", "metrics"):
            assert a["iters"][name][key] == b["iters"][name][key], f"{name}/{key} differs"


def test_a_run_killed_while_it_collects_loses_nothing(tmp_path, tiny_model, monkeypatch):
    from alignloop.loop.store import RunStore

    cfg = people_config(tmp_path, tiny_model, "killed")
    cfg = cfg.model_copy(update={"iterations": 1})
    with pytest.raises(WaitingForJudgments):
        run_in_process(cfg)
    judge_like_a_person(tmp_path / "killed")
    save = RunStore.save_judgments

    def killed(self, i, judgments):
        assert len(judgments) == 12
        raise KeyboardInterrupt  # stopped after collecting, before the judge step's file is written

    monkeypatch.setattr(RunStore, "save_judgments", killed)
    with pytest.raises(KeyboardInterrupt):
        run_in_process(cfg)
    monkeypatch.setattr(RunStore, "save_judgments", save)
    assert json.loads((tmp_path / "killed" / "state.json").read_text())["step"] == "sample"
    metrics = run_in_process(cfg)
    assert metrics[-1]["n_judged_by_people"] == 12
    judgments = (tmp_path / "killed" / "iter-0001" / "judgments.jsonl").read_text().splitlines()
    assert {json.loads(line)["judge"] for line in judgments} == {"human:alice"} and len(judgments) == 12


def test_a_mixed_run_judges_the_rest_with_the_other_judge(tmp_path, tiny_model):
    cfg = people_config(tmp_path, tiny_model, "mixed", other=RULES, share=0.5)
    with pytest.raises(WaitingForJudgments) as waiting:
        run_in_process(cfg)
    assert 0 < waiting.value.waiting < 12

    def disagree_once(queue, sid):  # the rules' verdict, but not on the first sample people see
        first = queue.load()["sample_ids"][0]
        return (queue.other()[sid].verdict == "negative") != (sid == first)

    judge_like_a_person(tmp_path / "mixed", bad_if=disagree_once)
    with pytest.raises(WaitingForJudgments):
        run_in_process(cfg)
    judge_like_a_person(tmp_path / "mixed", bad_if=disagree_once)
    metrics = run_in_process(cfg)
    assert len(metrics) == 2
    judges = [json.loads(line)["judge"] for line in (tmp_path / "mixed" / "iter-0001" / "judgments.jsonl").open()]
    assert set(judges) == {"human:alice", "rules"}
    other = (tmp_path / "mixed" / "iter-0001" / "review" / "other.jsonl").read_text().splitlines()
    assert len(other) == 12  # the rules judged every sample, so agreement can be measured

    from alignloop.loop.review import agreement, agreement_section

    rows = agreement(tmp_path / "mixed")
    assert [r["iteration"] for r in rows] == [1, 2]
    assert rows[0]["both"] == judges.count("human:alice")
    # The person gives the rules' verdict but on one sample per iteration.
    assert all(r["verdicts_agree"] == pytest.approx((r["both"] - 1) / r["both"]) for r in rows)
    assert "<h2>People and the other judge</h2>" in agreement_section(tmp_path / "mixed")
    assert agreement_section(tmp_path / "people") == ""


# the review page's server and the import --------------------------------------------------------------
@pytest.fixture
def page(tmp_path):
    from alignloop.loop.review import ReviewServer

    d, samples = iteration(tmp_path)
    ReviewQueue(d).write(human(), samples, machine(samples))
    server = ReviewServer(tmp_path / "run")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def http_status(request) -> int:
    import urllib.error

    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def call(url, body=None, headers=None):
    """(status, body) of a GET, or of a POST of `body` as JSON."""
    import urllib.error
    import urllib.request

    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_the_page_answers_only_with_its_token_on_this_address(page):
    base = page.url.split("?")[0]
    assert page.url.startswith("http://127.0.0.1:") and page.server_address[0] == "127.0.0.1"
    assert call(base)[0] == 403
    assert call(base + "?token=wrong")[0] == 403
    assert call(base + "api/items?token=" + page.token[:-1])[0] == 403
    assert call(base + "api/judgments", {"queue": "iter-0001"})[0] == 403
    assert call(page.url, headers={"Host": "evil.example:80"})[0] == 403  # DNS rebinding
    status, html = call(page.url)
    assert status == 200 and b"alignloop review" in html
    assert call(base + "nothing?token=" + page.token)[0] == 404


def test_the_page_saves_refuses_and_reports_conflicts(page):
    base = page.url.split("?")[0]
    api = base + "api/judgments?token=" + page.token
    good = {"queue": "iter-0001", "sample_id": "s2", "reviewer": "ann", "verdict": "negative", "critique": "no"}
    good["spans"] = [{"start": 0, "end": 5}]
    status, body = call(api, good)
    assert status == 200 and json.loads(body)["saved"]["rev"] == 1
    status, body = call(api, {**good, "reviewer": "bob"})
    assert status == 409 and json.loads(body)["current"]["reviewer"] == "ann"
    assert call(api, {**good, "queue": "iter-0009"})[0] == 400
    status, body = call(api, {**good, "spans": [{"start": 0, "end": 500}]})
    assert status == 400 and "runs past the response" in json.loads(body)["error"]
    for raw in (b"", b"not json", b"[" * 100_000, b"\xff\xfe"):
        request = urllib.request.Request(api, raw)
        assert http_status(request) == 400
    too_big = urllib.request.Request(api, b"{}", headers={"Content-Length": str(2 << 20)})
    assert http_status(too_big) == 413
    status, body = call(base + "api/items?token=" + page.token)
    listed = {it["sample_id"]: it for it in json.loads(body)["items"]}
    assert listed["s2"]["saved"]["judgment"]["spans"] == [{"start": 0, "end": 5, "reason": ""}]
    assert listed["s2"]["saved"]["judgment"]["judge"] == "human:ann" and listed["s0"]["saved"] is None
    assert listed["s0"]["response"] == "hello there number 0" and listed["s0"]["messages"][0]["content"] == "say hi"


def test_an_import_checks_every_line_before_saving_any(tmp_path, capsys):
    from alignloop.loop.cli import main

    d, samples = iteration(tmp_path)
    ReviewQueue(d).write(human(), samples, machine(samples))
    run = str(tmp_path / "run")
    lines = [
        {"sample_id": "s0", "reviewer": "ann", "verdict": "positive", "score": 1},
        {"sample_id": "s1", "verdict": "negative", "critique": "too long", "spans": [{"start": 0, "end": 5}]},
        {"sample_id": "s9", "reviewer": "ann", "verdict": "positive"},
    ]
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert main(["review", run, "--import", str(bad), "--reviewer", "tool"]) == 2
    assert f"{bad}:3: sample_id 's9' is not in the review queue" in capsys.readouterr().err
    assert ReviewQueue(d).saved() == {}  # nothing from the file before its bad line
    for text, message in [
        ("{oops\n", ":1: Expecting property name"),
        ("[1]\n", ":1: expected a JSON object"),
        (json.dumps(lines[0]) + "\n" + json.dumps(lines[0]) + "\n", ":2: sample 's0' is judged twice"),
        (json.dumps(lines[1]) + "\n", ":1: reviewer: Field required"),
        ("[" * 100_000 + "\n", ":1: maximum recursion depth"),
        ('{"sample_id": "s0", "reviewer": "a", "verdict": "negative", "spans": "x"}\n', ":1: spans: Input should be"),
    ]:
        bad.write_text(text)
        assert main(["review", run, "--import", str(bad)]) == 2
        assert message in capsys.readouterr().err
    good = tmp_path / "good.jsonl"
    good.write_text("".join(json.dumps(x) + "\n" for x in lines[:2]))
    assert main(["review", run, "--import", str(good), "--reviewer", "tool"]) == 0
    assert "imported 2 judgment(s)" in capsys.readouterr().out
    saved = ReviewQueue(d).saved()
    assert saved["s1"]["judgment"]["judge"] == "human:tool" and saved["s0"]["reviewer"] == "ann"
    assert main(["review", run, "--import", str(good), "--reviewer", "tool"]) == 0  # the same again: skipped
    assert "0 judgment(s)" in capsys.readouterr().out and len(list((d / "review" / "judgments").iterdir())) == 2
    bad.write_text(json.dumps({**lines[0], "verdict": "negative"}) + "\n")
    assert main(["review", run, "--import", str(bad)]) == 2
    assert "already judged by ann" in capsys.readouterr().err
    assert main(["review", str(tmp_path), "--import", str(good)]) == 2
    assert "no review queue" in capsys.readouterr().err


def test_a_series_page_lists_every_rounds_queue(tmp_path):
    from alignloop.loop.review import find_queues, items

    series = tmp_path / "series"
    (series).mkdir()
    (series / "series.json").write_text("{}")
    for round_id in ("2026-12-01", "2026-12-02"):
        d, samples = iteration(tmp_path / round_id, n=2)
        target = series / "rounds" / round_id / "iter-0001"
        target.parent.mkdir(parents=True)
        d.rename(target)
        ReviewQueue(target).write(human(), samples, machine(samples))
    queues = find_queues(series)
    assert list(queues) == ["rounds/2026-12-01/iter-0001", "rounds/2026-12-02/iter-0001"]
    assert [(it["queue"][7:17], it["sample_id"]) for it in items(queues)] == [
        ("2026-12-01", "s0"),
        ("2026-12-01", "s1"),
        ("2026-12-02", "s0"),
        ("2026-12-02", "s1"),
    ]


def test_an_import_into_a_series_refuses_a_sample_two_rounds_wait_for(tmp_path, capsys):
    from alignloop.loop.cli import main

    test_a_series_page_lists_every_rounds_queue(tmp_path)
    export = tmp_path / "export.jsonl"
    export.write_text(json.dumps({"sample_id": "s1", "reviewer": "ann", "verdict": "positive"}) + "\n")
    assert main(["review", str(tmp_path / "series"), "--import", str(export)]) == 2
    assert "waits in rounds/2026-12-01/iter-0001 and rounds/2026-12-02/iter-0001" in capsys.readouterr().err
    assert main(["review", str(tmp_path / "series" / "rounds" / "2026-12-02"), "--import", str(export)]) == 0


OUTAGE = [True]  # OutageJudge fails on every sample while this holds


class OutageJudge:
    """The other judge of a mixed set-up during an outage the user later fixes."""

    def __init__(self):
        self.name = "outage"

    async def judge(self, prompts, samples):
        if OUTAGE[0]:
            return [Judgment(sample_id=s.id, judge=self.name, error="HTTP 503") for s in samples]
        return [Judgment(sample_id=s.id, verdict="positive", score=1.0, judge=self.name) for s in samples]


def test_the_other_judges_failures_are_judged_again_on_the_rerun(tmp_path, tiny_model):
    from alignloop.loop.steps import JudgeErrorRate

    OUTAGE[0] = True
    other = {"type": "python", "target": "tests.unit.test_human_judge:OutageJudge"}
    cfg = people_config(tmp_path, tiny_model, "outage", other=other, share=0.5).model_copy(update={"iterations": 1})
    with pytest.raises(WaitingForJudgments):
        run_in_process(cfg)
    judge_like_a_person(tmp_path / "outage")
    with pytest.raises(JudgeErrorRate):  # people are done; the other judge failed on the rest
        run_in_process(cfg)
    OUTAGE[0] = False
    run_in_process(cfg)
    d = tmp_path / "outage" / "iter-0001"
    judges = [json.loads(line)["judge"] for line in (d / "judgments.jsonl").open()]
    assert set(judges) == {"human:alice", "outage"}
    assert not [line for line in (d / "review" / "other.jsonl").open() if '"error":null' not in line]
