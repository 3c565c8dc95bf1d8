"""Judgment spans: where rule checks and LLM judges put faults, and which sampled tokens a
span covers (hand-worked expectations), and CUT's three detection modes."""

from __future__ import annotations

import asyncio

import pytest
import torch

from alignloop.judges import build_judge
from alignloop.judges.composite import CompositeJudgeConfig
from alignloop.judges.prompting import locate_quotes, parse_judgment
from alignloop.judges.rules import RulesJudgeConfig
from alignloop.policies.objectives.base import TrainBatch
from alignloop.policies.objectives.cut import cut_loss, inappropriate_tokens
from alignloop.policies.objectives.options import CUTOptions
from alignloop.policies.spans import covered_tokens, span_token_mask, token_char_ranges
from alignloop.records import Judgment, Message, Prompt, Sample, Span

PROMPT = Prompt(id="p", messages=[Message(role="user", content="Explain tides.")])


def sample(text: str, finish="stop") -> Sample:
    return Sample(id="s", prompt_id="p", response=text, policy_version=0, finish_reason=finish)


def rule_spans(check: dict, text: str, finish="stop") -> list[str] | None:
    j = build_judge(RulesJudgeConfig(checks=[check]))
    (out,) = asyncio.run(j.judge([PROMPT], [sample(text, finish)]))
    return None if out.spans is None else [text[s.start : s.end] for s in out.spans]


# ---------------------------------------------------------------------------------------------
# where rule checks put the fault
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "check, text, finish, expected",
    [
        (
            {"type": "banned_phrases", "phrases": ["that", "very"], "whole_words": True},
            "That is very odd, and that matters.",
            "stop",
            ["That", "very", "that"],
        ),
        (
            {"type": "banned_phrases", "phrases": ["as an ai"]},
            "As an AI, I think as an ai would.",
            "stop",
            ["As an AI", "as an ai"],
        ),
        ({"type": "max_words", "limit": 3}, "one two three four five.", "stop", ["four five."]),
        ({"type": "max_sentences", "limit": 1}, "One. Two!  Three", "stop", ["Two!  Three"]),
        ({"type": "max_chars", "limit": 5}, "abcdefgh", "stop", ["fgh"]),
        ({"type": "finished"}, "Tides rise. They fall because the", "length", ["They fall because the"]),
        ({"type": "finished"}, "Tides rise because the moon", "length", ["Tides rise because the moon"]),
        ({"type": "no_lists"}, "Steps:\n1. Boil\n- Eat", "stop", ["1. Boil", "- Eat"]),
        ({"type": "regex", "pattern": r"\d+", "must": "not_match"}, "It is 42 or 7.", "stop", ["42", "7"]),
        ({"type": "starts_with", "prefix": "Yes"}, "  No, it is not.", "stop", ["No,"]),
        ({"type": "ends_with", "suffix": "Done."}, "It is 4.", "stop", [""]),
    ],
)
def test_localised_checks_give_exact_spans(check, text, finish, expected):
    assert rule_spans(check, text, finish) == expected


@pytest.mark.parametrize(
    "check, text",
    [
        ({"type": "min_words", "limit": 5}, "Too short."),
        ({"type": "valid_json"}, "{nope"),
        ({"type": "required_keywords", "keywords": ["moon"]}, "The sun."),
        ({"type": "regex", "pattern": "Answer"}, "No answer here."),
    ],
)
def test_checks_with_no_place_give_no_spans(check, text):
    assert rule_spans(check, text) is None


def test_passing_response_has_no_spans_and_spans_of_several_checks_merge():
    assert rule_spans({"type": "max_words", "limit": 9}, "Fine.") is None
    j = build_judge(
        RulesJudgeConfig(checks=[{"type": "max_words", "limit": 2}, {"type": "banned_phrases", "phrases": ["moon"]}])
    )
    (out,) = asyncio.run(j.judge([PROMPT], [sample("The moon pulls water")]))
    assert [(s.start, s.end) for s in out.spans] == [(4, 8), (9, 20)]  # "moon", then "pulls water"


def test_composite_all_merges_spans_and_gate_keeps_the_deciders():
    words = {"type": "rules", "name": "words", "checks": [{"type": "max_words", "limit": 2}]}
    banned = {"type": "rules", "name": "banned", "checks": [{"type": "banned_phrases", "phrases": ["moon"]}]}
    s = sample("The moon pulls water")
    (both,) = asyncio.run(build_judge(CompositeJudgeConfig(mode="all", judges=[words, banned])).judge([PROMPT], [s]))
    assert [(x.start, x.end) for x in both.spans] == [(4, 8), (9, 20)]
    (gate,) = asyncio.run(build_judge(CompositeJudgeConfig(mode="gate", judges=[banned, words])).judge([PROMPT], [s]))
    assert [(x.start, x.end) for x in gate.spans] == [(4, 8)]


def test_old_judgment_records_load_without_spans():
    j = Judgment.model_validate_json('{"sample_id": "s", "verdict": "negative", "judge": "rules"}')
    assert j.spans is None and j.unlocated_quotes == 0
    with pytest.raises(ValueError, match="before its start"):
        Span(start=5, end=2)


# ---------------------------------------------------------------------------------------------
# LLM judges' quotes
# ---------------------------------------------------------------------------------------------


def test_quotes_are_located_exactly_then_ignoring_case_and_whitespace():
    response = "Tides come from the Sun.\nThe   moon does  nothing."
    spans, unlocated = locate_quotes(response, ("from the Sun", "the moon does nothing", "made up", ""))
    assert [response[s.start : s.end] for s in spans] == ["from the Sun", "The   moon does  nothing"]
    assert unlocated == 2  # "made up", and an empty quote, are counted, never dropped silently


def test_parsed_reply_gives_spans_for_a_negative_only():
    s = sample("Tides come from the Sun.")
    neg = parse_judgment(
        '{"critique": "Wrong body.", "quotes": ["the sun", "Mars"], "verdict": "unsatisfactory", "score": 2}'
    ).judgment(s, "api", 0.0)
    assert [(x.start, x.end) for x in neg.spans] == [(16, 23)] and neg.unlocated_quotes == 1
    pos = parse_judgment('{"critique": "Fine.", "quotes": ["Tides"], "verdict": "satisfactory", "score": 9}')
    assert pos.judgment(s, "api", 0.0).spans is None
    old = parse_judgment('{"critique": "Wrong.", "verdict": "unsatisfactory", "score": 2}').judgment(s, "api", 0.0)
    assert old.spans is None and old.unlocated_quotes == 0  # a judge without quotes works as before


# ---------------------------------------------------------------------------------------------
# spans -> sampled tokens, hand-worked
# ---------------------------------------------------------------------------------------------

# "Tides are unbelievable." sampled as T|ides| are| un|believ|able|.|<eot>
RANGES = [(0, 1), (1, 5), (5, 9), (9, 12), (12, 18), (18, 22), (22, 23), (23, 23)]
SPECIAL = [False] * 7 + [True]


@pytest.mark.parametrize(
    "spans, expected",
    [
        ([(10, 22)], [0, 0, 0, 1, 1, 1, 0, 0]),  # "unbelievable": a word of three tokens
        ([(14, 15)], [0, 0, 0, 0, 1, 0, 0, 0]),  # one character inside a token marks the token
        ([(0, 5)], [1, 1, 0, 0, 0, 0, 0, 0]),  # the very start
        ([(22, 23)], [0, 0, 0, 0, 0, 0, 1, 0]),  # the last character: the end-of-turn token is not in it
        ([(23, 23)], [0, 0, 0, 0, 0, 0, 0, 1]),  # an empty span at the end: the end-of-turn token
        ([(9, 9)], [0, 0, 0, 1, 0, 0, 0, 0]),  # an empty span elsewhere: the token at that offset
        ([(1, 12), (10, 20)], [0, 1, 1, 1, 1, 1, 0, 0]),  # overlapping spans: their union
        ([], [0] * 8),
    ],
)
def test_spans_cover_the_tokens_they_overlap(spans, expected):
    got = covered_tokens(RANGES, SPECIAL, [Span(start=a, end=b) for a, b in spans])
    assert [int(x) for x in got] == expected


def byte_level_tokenizer():
    """A real byte-level BPE tokenizer (GPT-2 style, as SmolLM2's), trained here on a few words
    so that unseen words and non-ASCII text split into several tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|im_end|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(["the tides are strong", "the moon pulls the sea"] * 20, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>")


def test_offsets_come_from_the_sampled_ids():
    tok = byte_level_tokenizer()
    text = " The tides are café-strong 日本."  # leading space: the sampler strips it
    ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    response = text.strip()
    ranges = token_char_ranges(tok, ids, response)
    pieces = [response[a:b] for a, b in ranges]
    assert ranges[-1] == (len(response), len(response))  # the end-of-turn token, after the text
    # every character belongs to the token(s) that produced it, in order
    assert "".join(response[a:b] for a, b in dict.fromkeys(ranges)) == response
    assert all(a <= b for a, b in ranges) and [a for a, _ in ranges] == sorted(a for a, _ in ranges)
    ja = response.index("日")
    byte_tokens = [k for k, (a, b) in enumerate(ranges) if a <= ja < b]
    assert len(byte_tokens) > 1  # one character, several byte tokens: all of them cover it
    mask = span_token_mask(tok, ids, response, [Span(start=ja, end=ja + 1)])
    assert [k for k, m in enumerate(mask) if m] == byte_tokens
    word = response.index("café")
    mask = span_token_mask(
        tok, ids, response, [Span(start=word, end=word + 4), Span(start=len(response), end=len(response))]
    )
    assert "".join(dict.fromkeys(pieces[k] for k, m in enumerate(mask) if m)).strip() == "café"
    assert mask[-1]  # and the end-of-turn token, from the empty span at the end


def test_ids_that_do_not_decode_to_the_response_give_no_offsets():
    tok = byte_level_tokenizer()
    ids = tok("the tides", add_special_tokens=False)["input_ids"]
    assert token_char_ranges(tok, ids, "the moon") is None


# ---------------------------------------------------------------------------------------------
# CUT's detection modes
# ---------------------------------------------------------------------------------------------


def cut_batch() -> TrainBatch:
    # Two negatives of 3 tokens: row 0 has spans on its token 0, row 1 has none. The judged
    # context makes token 2 of each row much more likely (ratio e^1 > lambda).
    plain = torch.log(torch.full((2, 3), 0.5))
    judged = plain.clone()
    judged[:, 2] += 1.0
    return TrainBatch(
        plain=plain,
        judged=judged,
        mask=torch.ones(2, 3),
        negative=torch.ones(2),
        span_mask=torch.tensor([[1.0, 0, 0], [0, 0, 0]]),
        has_spans=torch.tensor([1.0, 0.0]),
    )


@pytest.mark.parametrize(
    "detection, expected",
    [
        ("ratio", [[0, 0, 1], [0, 0, 1]]),
        ("spans", [[1, 0, 0], [0, 0, 0]]),
        ("auto", [[1, 0, 0], [0, 0, 1]]),
    ],
)
def test_detection_modes(detection, expected):
    got = inappropriate_tokens(cut_batch(), CUTOptions(detection=detection, threshold=2.0))
    assert got.tolist() == expected


def test_detection_metrics_say_where_detection_came_from():
    _, m = cut_loss(cut_batch(), CUTOptions(detection="auto", threshold=2.0))
    assert m["cut_negatives_with_spans"] == 0.5
    assert m["detected_fraction_spans"] == pytest.approx(1 / 3) and m["detected_fraction_ratio"] == pytest.approx(1 / 3)
    # on the row with spans the ratio marks token 2 and the judge token 0: no agreement
    assert m["ratio_precision_vs_spans"] == 0.0 and m["ratio_recall_vs_spans"] == 0.0
