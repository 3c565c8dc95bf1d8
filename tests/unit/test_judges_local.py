"""Local judges (reward model, critique model) on tiny random models, the composite judge and
custom plugins. The embedded 135M model as a judge is tests/integration/test_judges_local.py."""

from __future__ import annotations

import importlib.metadata

import pytest
from pydantic import BaseModel, ConfigDict

from alignloop.judges import build_judge
from alignloop.judges.plugins import PluginError, PythonJudgeConfig, build_plugin
from alignloop.judges.reward_model import check_labels
from alignloop.loop.config import ConfigError
from alignloop.loop.roles.judges import JudgeWorker
from alignloop.policies.model import Reply
from alignloop.records import Judgment
from tests.conftest import WORDS
from tests.helpers import judge_all, judge_config
from tests.judge_fakes import make_steps, prompts_and_samples

HERE = "tests.unit.test_judges_local"


# Plugin judges used below (loaded by import path, as a user's would be) ---------------------


class LengthJudge:
    """Positive when the response has at least `min_words` words; score = words / 10."""

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")
        min_words: int = 2

    def __init__(self, config: Config):
        self.config, self.name, self.seen = config, "length", []

    async def judge(self, prompts, samples):
        self.seen += [s.id for s in samples]
        out = []
        for s in samples:
            n = len(s.response.split())
            ok = n >= self.config.min_words
            out.append(
                Judgment(
                    sample_id=s.id,
                    verdict="positive" if ok else "negative",
                    score=min(1.0, n / 10),
                    critique="Long enough." if ok else f"Only {n} words.",
                    judge=self.name,
                )
            )
        return out


class FailsOn:
    """No Config class: options arrive as keyword arguments. Errors on responses containing `word`."""

    def __init__(self, word: str, name: str = "fails_on"):
        self.word, self.name = word, name

    async def judge(self, prompts, samples):
        return [
            Judgment(sample_id=s.id, judge=self.name, error="backend unavailable")
            if self.word in s.response
            else Judgment(sample_id=s.id, verdict="positive", score=1.0, critique="Fine.", judge=self.name)
            for s in samples
        ]


class NoJudgeMethod:
    name = "x"


class SyncJudge:
    name = "x"

    def judge(self, prompts, samples):
        return []


class Nameless:
    async def judge(self, prompts, samples):
        return []


# reward model -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_reward_model(tmp_path_factory):
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from alignloop.policies.tiny import build_tokenizer

    tokenizer = build_tokenizer(WORDS)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_labels=1,
        pad_token_id=tokenizer.pad_token_id,
        max_position_embeddings=256,
    )
    out = tmp_path_factory.mktemp("tiny-rm")
    LlamaForSequenceClassification(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


RM_TEXTS = ["the cat sat", "a big red dog ran on the mat", "no", "the sun is big and the moon is small", "yes yes"]


def test_reward_model_scores_batched_like_unbatched_and_thresholds_verdicts(tiny_reward_model):
    one = build_judge(
        judge_config(
            {"type": "reward_model", "path": str(tiny_reward_model), "batch_size": 1, "device": "cpu", "threads": 1}
        )
    )
    _, single = judge_all(one, RM_TEXTS)
    scores = [j.score for j in single]
    threshold = sorted(scores)[2]  # the median: some of each verdict
    many = build_judge(
        judge_config(
            {
                "type": "reward_model",
                "path": str(tiny_reward_model),
                "batch_size": 4,
                "threshold": threshold,
                "device": "cpu",
                "threads": 1,
            }
        )
    )
    samples, batched = judge_all(many, RM_TEXTS)
    assert [j.sample_id for j in batched] == [s.id for s in samples]
    assert [j.score for j in batched] == pytest.approx(scores, abs=1e-5), "padding changed the scores"
    assert [j.verdict for j in batched] == ["positive" if x >= threshold else "negative" for x in scores]
    assert {"positive", "negative"} == {j.verdict for j in batched}
    assert all(j.critique is None and j.error is None and j.judge == "reward_model" for j in batched)
    assert len(set(scores)) == len(scores), "a random model should tell the inputs apart"


def test_reward_model_label_options_are_checked():
    with pytest.raises(ValueError, match="has 3 output labels; set judge.positive_label"):
        check_labels(3, None, "rm")
    with pytest.raises(ValueError, match="positive_label is 1 but rm has only 1 labels"):
        check_labels(1, 1, "rm")
    check_labels(2, 1, "rm")


# critique model ---------------------------------------------------------------------------


def test_critique_model_gibberish_is_an_unparseable_error_not_a_verdict(tiny_model):
    judge = build_judge(
        judge_config(
            {
                "type": "critique_model",
                "path": str(tiny_model),
                "max_new_tokens": 8,
                "batch_size": 2,
                "device": "cpu",
                "threads": 1,
                "constrained": False,
            }
        )
    )
    samples, out = judge_all(judge, ["the cat sat", "a dog ran", "yes"])
    assert [j.sample_id for j in out] == [s.id for s in samples]
    for j in out:
        assert j.verdict is None and j.score is None and j.critique is None
        assert j.error.startswith("unparseable judge reply"), j.error


def test_critique_model_reads_replies_with_the_api_judges_parser(tiny_model, monkeypatch):
    judge = build_judge(
        judge_config(
            {"type": "critique_model", "path": str(tiny_model), "device": "cpu", "threads": 1, "constrained": False}
        )
    )
    seen = []

    def generate(chats):
        seen.extend(chats)
        return [
            Reply('```json\n{"critique": "Cut short.", "verdict": "unsatisfactory", "score": 4}\n```', False)
        ] * len(chats)

    monkeypatch.setattr(judge, "generate", generate)
    _, (j,) = judge_all(judge, ["the cat"])
    assert (j.verdict, j.score, j.critique, j.error) == ("negative", pytest.approx(1 / 3), "Cut short.", None)
    assert "<<<BEGIN RESPONSE" in seen[0][-1]["content"] and seen[0][0]["role"] == "system"


def test_a_reply_cut_off_at_max_new_tokens_says_so(tiny_model, monkeypatch):
    judge = build_judge(
        judge_config(
            {
                "type": "critique_model",
                "path": str(tiny_model),
                "device": "cpu",
                "threads": 1,
                "constrained": False,
                "max_new_tokens": 7,
            }
        )
    )
    monkeypatch.setattr(judge, "generate", lambda chats: [Reply('{"critique": "The resp', True)] * len(chats))
    _, (j,) = judge_all(judge, ["the cat"])
    assert (
        j.verdict is None
        and "cut off at judge.max_new_tokens (7)" in j.error
        and "raise judge.max_new_tokens" in j.error
    )


def test_constrained_decoding_needs_a_tokenizer_that_can_write_json(tiny_model):
    """The tiny model's word-level vocabulary (no "{", a WordPiece decoder): said before any actor starts."""
    cfg = judge_config({"type": "critique_model", "path": str(tiny_model)})
    with pytest.raises(ConfigError, match="tokenizer cannot drive constrained decoding.*judge.constrained: false"):
        cfg.preflight()


# composite --------------------------------------------------------------------------------


RULES = {"type": "rules", "checks": [{"type": "max_words", "limit": 3}]}


def test_gate_sends_only_passing_samples_on_and_keeps_the_gate_critique():
    judge = build_judge(
        judge_config(
            {
                "type": "composite",
                "mode": "gate",
                "judges": [RULES, {"type": "python", "target": f"{HERE}:LengthJudge", "options": {"min_words": 2}}],
            }
        )
    )
    samples, out = judge_all(judge, ["one two three four five", "one two", "one", "a b c d"])
    assert judge.judges[1].seen == ["s001", "s002"], "a gate failure must not reach the next judge"
    gate_fail, passed, second_fail, _ = out
    assert (gate_fail.verdict, gate_fail.judge) == ("negative", "composite:rules")
    assert gate_fail.critique == "The response has 5 words; the limit is 3." and gate_fail.score == 0.0
    assert (passed.verdict, passed.score, passed.critique, passed.judge) == (
        "positive",
        0.2,
        "Long enough.",
        "composite:length",
    )
    assert (second_fail.verdict, second_fail.critique) == ("negative", "Only 1 words.")
    assert [j.sample_id for j in out] == [s.id for s in samples]


def test_gate_fail_score_and_errors_propagate():
    judge = build_judge(
        judge_config(
            {
                "type": "composite",
                "mode": "gate",
                "gate_fail_score": -1.0,
                "judges": [
                    {"type": "python", "target": f"{HERE}:FailsOn", "options": {"word": "boom"}},
                    {**RULES, "checks": [{"type": "min_words", "limit": 2}]},
                ],
            }
        )
    )
    _, (err, gated, ok) = judge_all(judge, ["boom now", "one", "two words"])
    assert err.error == "backend unavailable" and err.verdict is None and err.score is None
    assert (gated.verdict, gated.score) == ("negative", 0.0), "the last judge's score is its own"
    assert ok.verdict == "positive"
    judge2 = build_judge(
        judge_config(
            {
                "type": "composite",
                "mode": "gate",
                "gate_fail_score": -1.0,
                "judges": [RULES, {"type": "python", "target": f"{HERE}:FailsOn", "options": {"word": "boom"}}],
            }
        )
    )
    _, (gate_fail,) = judge_all(judge2, ["one two three four"])
    assert (gate_fail.verdict, gate_fail.score) == ("negative", -1.0)


def test_all_mode_combines_verdicts_weighted_scores_and_named_critiques():
    judge = build_judge(
        judge_config(
            {
                "type": "composite",
                "mode": "all",
                "weights": [1, 3],
                "judges": [RULES, {"type": "python", "target": f"{HERE}:LengthJudge", "options": {"min_words": 2}}],
            }
        )
    )
    _, (short, long_, err) = judge_all(judge, ["one two", "one two three four five", "x"])
    # short: rules 1.0 and length 0.2 -> (1 * 1.0 + 3 * 0.2) / 4 = 0.4
    assert (short.verdict, short.score) == ("positive", pytest.approx(0.4))
    assert short.critique == "[rules] The response meets every requirement.\n[length] Long enough."
    # long: rules 0.0 (fails), length 0.5 -> (0 + 1.5) / 4 = 0.375; one negative makes it negative
    assert (long_.verdict, long_.score) == ("negative", pytest.approx(0.375))
    assert err.verdict == "negative" and err.judge == "composite"
    failing = build_judge(
        judge_config(
            {
                "type": "composite",
                "mode": "all",
                "judges": [RULES, {"type": "python", "target": f"{HERE}:FailsOn", "options": {"word": "x"}}],
            }
        )
    )
    _, (e,) = judge_all(failing, ["x"])
    assert (e.verdict, e.score, e.error) == (None, None, "fails_on: backend unavailable")


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"type": "composite", "judges": [RULES, RULES]}, "repeat; give each judge a distinct `name`"),
        ({"type": "composite", "mode": "gate", "weights": [1], "judges": [RULES]}, "weights apply to mode: all only"),
        ({"type": "composite", "mode": "all", "weights": [1, 2], "judges": [RULES]}, "weights must be 1 non-negative"),
        (
            {"type": "composite", "judges": [{**RULES, "checks": [{"type": "max_words", "limt": 3}]}]},
            "judge.judges.0.checks.0.limt: unknown field",
        ),
    ],
)
def test_composite_config_errors(raw, message):
    with pytest.raises(ConfigError, match=message):
        judge_config(raw)


# plugins ----------------------------------------------------------------------------------


def test_plugin_by_import_path_with_validated_options_runs_in_a_judge_worker():
    cfg = judge_config({"type": "python", "target": f"{HERE}:LengthJudge", "options": {"min_words": 3}, "name": "len3"})
    prompts, samples = prompts_and_samples(["one two three", "one"])
    by_id = {p.id: p for p in prompts}
    out = JudgeWorker(cfg).judge_sync([by_id[s.prompt_id] for s in samples], samples)
    assert [(j.sample_id, j.verdict, j.judge) for j in out] == [
        ("s000", "positive", "len3"),
        ("s001", "negative", "len3"),
    ]


def test_plugin_runs_an_iteration_judge_step(tmp_path):
    steps = make_steps(
        {"type": "python", "target": f"{HERE}:FailsOn", "options": {"word": "zzz"}}, tmp_path, actors=2, chunk_size=2
    )
    prompts, samples = prompts_and_samples(["a", "b", "zzz", "d", "e"])
    judged = steps.judge(1, prompts, samples, {}, retry_failed=False)
    assert [j.sample_id for j in judged.judgments] == [s.id for s in samples]
    assert judged.metrics["n_judge_errors"] == 1 and steps.store.load_state().step == "judge"


def test_plugin_from_an_entry_point(monkeypatch):
    ep = importlib.metadata.EntryPoint(name="length", value=f"{HERE}:LengthJudge", group="alignloop.judges")
    real = importlib.metadata.entry_points
    monkeypatch.setattr(
        importlib.metadata, "entry_points", lambda **kw: [ep] if kw.get("group") == "alignloop.judges" else real(**kw)
    )
    cfg = judge_config({"type": "python", "entry_point": "length", "options": {"min_words": 1}})
    samples, out = judge_all(JudgeWorker(cfg), ["hi"])
    assert (out[0].verdict, out[0].judge) == ("positive", "length")
    with pytest.raises(
        ConfigError, match="no judge named 'nope' in the 'alignloop.judges' entry-point group .installed: length"
    ):
        judge_config({"type": "python", "entry_point": "nope"})


@pytest.mark.parametrize(
    "raw, message",
    [
        (
            {"target": "no_such_pkg.judges:J"},
            "cannot import 'no_such_pkg.judges' for judge target 'no_such_pkg.judges:J': ModuleNotFoundError",
        ),
        ({"target": f"{HERE}:Missing"}, f"module '{HERE}' has no attribute 'Missing'"),
        ({"target": "tests.unit.test_judges_local"}, "must look like 'my_pkg.judges:MyJudge'"),
        ({"target": f"{HERE}:NoJudgeMethod"}, "does not satisfy the Judge protocol: it has no method `async def judge"),
        ({"target": f"{HERE}:SyncJudge"}, "`judge` must be `async def`"),
        ({"target": f"{HERE}:judge_all"}, "is a function, not a class"),
        (
            {"target": f"{HERE}:LengthJudge", "options": {"min_wrds": 2}},
            "options for .* are invalid: min_wrds: Extra inputs",
        ),
        ({}, "set exactly one of `target`"),
    ],
)
def test_plugin_errors_name_the_target_and_the_cause(raw, message):
    with pytest.raises(ConfigError, match=message):
        judge_config({"type": "python", **raw})


def test_plugin_construction_errors():
    with pytest.raises(PluginError, match="instances need a `name`"):
        build_plugin(PythonJudgeConfig(target=f"{HERE}:Nameless"))
    # Options the constructor does not take fail when the config is validated (judges/plugins.py).
    with pytest.raises(ValueError, match=r"FailsOn\(\) takes no option 'wrod'; it takes: word, name"):
        PythonJudgeConfig(target=f"{HERE}:FailsOn", options={"wrod": "x"})
