"""Rule-based judge: composable checks that each say, in one sentence, what is wrong, and,
where the fault has a place, exactly where (character spans of the response).

The verdict is positive only when every check passes; the score is the fraction that pass.
The sentences of the failing checks, joined, are the critique — a natural-language judgment
that CUT and Hindsight can learn from; the spans of all failing checks are the judgment's
`spans`, which CUT's `detection: spans` trains on. Checks with no place (too short, invalid
JSON, a missing keyword) give a sentence and no span.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from alignloop.records import Judgment, Prompt, Sample, Span, merged_spans

_WORD = re.compile(r"\b[\w'’-]+\b")
_SENTENCE_END = re.compile(r"[.!?]+(?=\s|$)")
_LIST_LINE = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+", re.MULTILINE)


def count_words(text: str) -> int:
    return len(_WORD.findall(text))


@dataclass(frozen=True)
class Fault:
    """What a failing check says: one sentence, and the spans it is about (none: no place)."""

    message: str
    spans: tuple[Span, ...] = field(default=())


def tail(text: str, start: int, reason: str) -> tuple[Span, ...]:
    """The rest of the text from `start`, leading whitespace left out."""
    while start < len(text) and text[start].isspace():
        start += 1
    return (Span(start=start, end=len(text), reason=reason),) if start < len(text) else ()


def sentence_ends(text: str) -> list[int]:
    """The offset just past each sentence-ending run of punctuation."""
    return [m.end() for m in _SENTENCE_END.finditer(text)]


class Check(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def __call__(self, prompt: Prompt, sample: Sample) -> Fault | None:
        """None when the response passes, else what is wrong (and where)."""
        raise NotImplementedError


class MaxWords(Check):
    type: Literal["max_words"] = "max_words"
    limit: int = Field(gt=0, description="Most words allowed.")

    def __call__(self, prompt, sample):
        words = list(_WORD.finditer(sample.response))
        if len(words) > self.limit:
            over = tail(sample.response, words[self.limit].start(), f"past the {self.limit}-word limit")
            return Fault(f"The response has {len(words)} words; the limit is {self.limit}.", over)
        return None


class MinWords(Check):
    type: Literal["min_words"] = "min_words"
    limit: int = Field(gt=0, description="Fewest words allowed.")

    def __call__(self, prompt, sample):
        n = count_words(sample.response)
        if n < self.limit:
            return Fault(f"The response has only {n} words; it needs at least {self.limit}.")
        return None


class MaxSentences(Check):
    type: Literal["max_sentences"] = "max_sentences"
    limit: int = Field(gt=0, description="Most sentences allowed.")

    def __call__(self, prompt, sample):
        text = sample.response.strip()
        n = len(_SENTENCE_END.findall(text)) + (0 if not text or text[-1] in ".!?" else 1)
        if n > self.limit:
            cut = sentence_ends(sample.response)[self.limit - 1]
            return Fault(
                f"The response has {n} sentences; the limit is {self.limit}.",
                tail(sample.response, cut, f"past the {self.limit}-sentence limit"),
            )
        return None


class BannedPhrases(Check):
    type: Literal["banned_phrases"] = "banned_phrases"
    phrases: list[str] = Field(min_length=1, description="Phrases the response must not contain.")
    case_sensitive: bool = Field(False, description="Match case exactly.")
    whole_words: bool = Field(False, description="Match only whole words ('it' does not match 'item').")

    def __call__(self, prompt, sample):
        flags = 0 if self.case_sensitive else re.IGNORECASE
        edge = r"\b" if self.whole_words else ""
        found, spans = [], []
        for p in self.phrases:
            hits = list(re.finditer(f"{edge}{re.escape(p)}{edge}", sample.response, flags))
            found += [p] if hits else []
            spans += [Span(start=m.start(), end=m.end(), reason=f'banned "{p}"') for m in hits]
        if found:
            noun = "word" if self.whole_words else "phrase"
            quoted = ", ".join(f'"{p}"' for p in found)
            return Fault(
                f"The response uses the banned {noun}{'s' if len(found) > 1 else ''} {quoted}.",
                tuple(merged_spans(spans)),
            )
        return None


class RequiredKeywords(Check):
    type: Literal["required_keywords"] = "required_keywords"
    keywords: list[str] = Field(min_length=1, description="Words the response must contain.")
    mode: Literal["all", "any"] = Field("all", description="Need every keyword, or at least one.")

    def __call__(self, prompt, sample):
        text = sample.response.lower()
        missing = [k for k in self.keywords if k.lower() not in text]
        if (self.mode == "all" and missing) or (self.mode == "any" and len(missing) == len(self.keywords)):
            quoted = ", ".join(f'"{k}"' for k in missing)
            need = "every one of" if self.mode == "all" else "at least one of"
            return Fault(f"The response must contain {need} the keywords; missing: {quoted}.")
        return None


class Finished(Check):
    """Fails responses cut off by the token limit: an unfinished answer is a wrong answer."""

    type: Literal["finished"] = "finished"

    def __call__(self, prompt, sample):
        if sample.finish_reason == "length":
            # The fault is the ending that never came: the unfinished last sentence.
            text = sample.response
            ends = [e for e in sentence_ends(text) if text[e:].strip()]
            return Fault(
                "The response is cut off mid-way instead of coming to an end.",
                tail(text, ends[-1] if ends else 0, "cut off"),
            )
        return None


class NoLists(Check):
    type: Literal["no_lists"] = "no_lists"

    def __call__(self, prompt, sample):
        lines = [m for m in re.finditer(r"^.*$", sample.response, re.MULTILINE) if _LIST_LINE.match(m.group())]
        if lines:
            return Fault(
                "The response uses a bulleted or numbered list instead of plain prose.",
                tuple(Span(start=m.start(), end=m.end(), reason="list line") for m in lines),
            )
        return None


class Regex(Check):
    """A pattern the response must (or must not) contain, e.g. a final "Answer: <number>" line."""

    type: Literal["regex"] = "regex"
    pattern: str = Field(description="Python regular expression, searched anywhere in the response.")
    must: Literal["match", "not_match"] = Field("match", description="Whether the pattern must be found or absent.")
    ignore_case: bool = Field(False, description="Match regardless of case.")
    message: str | None = Field(None, description="The critique sentence when the check fails (None: a generic one).")

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, v: str) -> str:
        try:
            re.compile(v)
        except re.error as e:
            raise ValueError(f"pattern {v!r} is not a valid regular expression: {e}") from None
        return v

    def __call__(self, prompt, sample):
        hits = [m for m in re.finditer(self.pattern, sample.response, re.IGNORECASE if self.ignore_case else 0)]
        if bool(hits) == (self.must == "match"):
            return None
        if self.must == "match":
            return Fault(self.message or f"The response does not contain the required pattern /{self.pattern}/.")
        spans = tuple(Span(start=m.start(), end=m.end(), reason=f"matches /{self.pattern}/") for m in hits)
        return Fault(self.message or f"The response contains the forbidden pattern /{self.pattern}/.", spans)


class MaxChars(Check):
    """Length in characters: the same measure in every language, with or without spaces."""

    type: Literal["max_chars"] = "max_chars"
    limit: int = Field(gt=0, description="Most characters allowed.")

    def __call__(self, prompt, sample):
        n = len(sample.response)
        if n > self.limit:
            return Fault(
                f"The response has {n} characters; the limit is {self.limit}.",
                tail(sample.response, self.limit, f"past the {self.limit}-character limit"),
            )
        return None


class MinChars(Check):
    type: Literal["min_chars"] = "min_chars"
    limit: int = Field(gt=0, description="Fewest characters allowed (ignoring surrounding whitespace).")

    def __call__(self, prompt, sample):
        n = len(sample.response.strip())
        if n < self.limit:
            return Fault(f"The response has only {n} characters; it needs at least {self.limit}.")
        return None


class StartsWith(Check):
    type: Literal["starts_with"] = "starts_with"
    prefix: str = Field(min_length=1, description="Text the response must begin with (leading whitespace ignored).")

    def __call__(self, prompt, sample):
        text = sample.response
        if not text.lstrip().startswith(self.prefix):
            # The wrong opening: the first word (or what stands where the prefix should).
            start = len(text) - len(text.lstrip())
            first = _WORD.search(text, start)
            end = max(first.end() if first else start, min(len(text), start + len(self.prefix)))
            spans = (Span(start=start, end=end, reason="wrong opening"),) if end > start else ()
            return Fault(f'The response must begin with "{self.prefix}".', spans)
        return None


class EndsWith(Check):
    type: Literal["ends_with"] = "ends_with"
    suffix: str = Field(min_length=1, description="Text the response must end with (trailing whitespace ignored).")

    def __call__(self, prompt, sample):
        text = sample.response
        if not text.rstrip().endswith(self.suffix):
            # It stopped where the suffix should have come: the end-of-turn token (an empty span
            # at the end of the text).
            return Fault(
                f'The response must end with "{self.suffix}".',
                (Span(start=len(text), end=len(text), reason="missing ending"),),
            )
        return None


class ValidJson(Check):
    """For tasks that ask for machine-readable output: the whole response must parse as JSON."""

    type: Literal["valid_json"] = "valid_json"

    def __call__(self, prompt, sample):
        try:
            json.loads(sample.response)
        except json.JSONDecodeError as e:
            return Fault(f"The response is not valid JSON ({e.msg} at character {e.pos}).")
        return None


CheckConfig = Annotated[
    MaxWords
    | MinWords
    | MaxSentences
    | BannedPhrases
    | RequiredKeywords
    | Finished
    | NoLists
    | Regex
    | MaxChars
    | MinChars
    | StartsWith
    | EndsWith
    | ValidJson,
    Field(discriminator="type"),
]


class RulesJudgeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["rules"] = "rules"
    name: str = Field("rules", description="Recorded as `judge` on every judgment.")
    checks: list[CheckConfig] = Field(min_length=1, description="Checks, applied in order.")
    pass_critique: str = Field(
        "The response meets every requirement.", description="Critique text for a positive verdict."
    )


class RulesJudge:
    def __init__(self, config: RulesJudgeConfig):
        self.config = config
        self.name = config.name

    def judge_one(self, prompt: Prompt, sample: Sample) -> Judgment:
        start = time.perf_counter()
        faults = [f for c in self.config.checks if (f := c(prompt, sample)) is not None]
        passed = len(self.config.checks) - len(faults)
        spans = merged_spans(s for f in faults for s in f.spans)
        return Judgment(
            sample_id=sample.id,
            verdict="negative" if faults else "positive",
            score=passed / len(self.config.checks),
            critique=" ".join(f.message for f in faults) if faults else self.config.pass_critique,
            judge=self.name,
            latency_s=time.perf_counter() - start,
            spans=spans or None,
        )

    async def judge(self, prompts: Sequence[Prompt], samples: Sequence[Sample]) -> list[Judgment]:
        return [self.judge_one(p, s) for p, s in zip(prompts, samples, strict=True)]
