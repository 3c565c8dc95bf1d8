"""Rule-based judge: composable checks that each say, in one sentence, what is wrong.

The verdict is positive only when every check passes; the score is the fraction that pass.
The sentences of the failing checks, joined, are the critique — a natural-language judgment
that CUT and Hindsight can learn from.
"""

from __future__ import annotations

import json
import re
import time
from typing import Annotated, Literal, Sequence, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

from records import Judgment, Prompt, Sample

_WORD = re.compile(r"\b[\w'’-]+\b")
_SENTENCE_END = re.compile(r"[.!?]+(?=\s|$)")
_LIST_LINE = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+", re.MULTILINE)


def count_words(text: str) -> int:
    return len(_WORD.findall(text))


class Check(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def __call__(self, prompt: Prompt, sample: Sample) -> str | None:
        """None when the response passes, else one sentence saying what is wrong."""
        raise NotImplementedError


class MaxWords(Check):
    type: Literal["max_words"] = "max_words"
    limit: int = Field(gt=0, description="Most words allowed.")

    def __call__(self, prompt, sample):
        n = count_words(sample.response)
        if n > self.limit:
            return f"The response has {n} words; the limit is {self.limit}."
        return None


class MinWords(Check):
    type: Literal["min_words"] = "min_words"
    limit: int = Field(gt=0, description="Fewest words allowed.")

    def __call__(self, prompt, sample):
        n = count_words(sample.response)
        if n < self.limit:
            return f"The response has only {n} words; it needs at least {self.limit}."
        return None


class MaxSentences(Check):
    type: Literal["max_sentences"] = "max_sentences"
    limit: int = Field(gt=0, description="Most sentences allowed.")

    def __call__(self, prompt, sample):
        text = sample.response.strip()
        n = len(_SENTENCE_END.findall(text)) + (0 if not text or text[-1] in ".!?" else 1)
        if n > self.limit:
            return f"The response has {n} sentences; the limit is {self.limit}."
        return None


class BannedPhrases(Check):
    type: Literal["banned_phrases"] = "banned_phrases"
    phrases: list[str] = Field(min_length=1, description="Phrases the response must not contain.")
    case_sensitive: bool = Field(False, description="Match case exactly.")
    whole_words: bool = Field(False, description="Match only whole words ('it' does not match 'item').")

    def __call__(self, prompt, sample):
        flags = 0 if self.case_sensitive else re.IGNORECASE
        edge = r"\b" if self.whole_words else ""
        found = [p for p in self.phrases if re.search(f"{edge}{re.escape(p)}{edge}", sample.response, flags)]
        if found:
            noun = "word" if self.whole_words else "phrase"
            quoted = ", ".join(f'"{p}"' for p in found)
            return f"The response uses the banned {noun}{'s' if len(found) > 1 else ''} {quoted}."
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
            return f"The response must contain {need} the keywords; missing: {quoted}."
        return None


class Finished(Check):
    """Fails responses cut off by the token limit: an unfinished answer is a wrong answer."""

    type: Literal["finished"] = "finished"

    def __call__(self, prompt, sample):
        if sample.finish_reason == "length":
            return "The response is cut off mid-way instead of coming to an end."
        return None


class NoLists(Check):
    type: Literal["no_lists"] = "no_lists"

    def __call__(self, prompt, sample):
        if _LIST_LINE.search(sample.response):
            return "The response uses a bulleted or numbered list instead of plain prose."
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
        found = re.search(self.pattern, sample.response, re.IGNORECASE if self.ignore_case else 0) is not None
        if found == (self.must == "match"):
            return None
        if self.message:
            return self.message
        if self.must == "match":
            return f"The response does not contain the required pattern /{self.pattern}/."
        return f"The response contains the forbidden pattern /{self.pattern}/."


class MaxChars(Check):
    """Length in characters: the same measure in every language, with or without spaces."""

    type: Literal["max_chars"] = "max_chars"
    limit: int = Field(gt=0, description="Most characters allowed.")

    def __call__(self, prompt, sample):
        n = len(sample.response)
        if n > self.limit:
            return f"The response has {n} characters; the limit is {self.limit}."
        return None


class MinChars(Check):
    type: Literal["min_chars"] = "min_chars"
    limit: int = Field(gt=0, description="Fewest characters allowed (ignoring surrounding whitespace).")

    def __call__(self, prompt, sample):
        n = len(sample.response.strip())
        if n < self.limit:
            return f"The response has only {n} characters; it needs at least {self.limit}."
        return None


class StartsWith(Check):
    type: Literal["starts_with"] = "starts_with"
    prefix: str = Field(min_length=1, description="Text the response must begin with (leading whitespace ignored).")

    def __call__(self, prompt, sample):
        if not sample.response.lstrip().startswith(self.prefix):
            return f'The response must begin with "{self.prefix}".'
        return None


class EndsWith(Check):
    type: Literal["ends_with"] = "ends_with"
    suffix: str = Field(min_length=1, description="Text the response must end with (trailing whitespace ignored).")

    def __call__(self, prompt, sample):
        if not sample.response.rstrip().endswith(self.suffix):
            return f'The response must end with "{self.suffix}".'
        return None


class ValidJson(Check):
    """For tasks that ask for machine-readable output: the whole response must parse as JSON."""

    type: Literal["valid_json"] = "valid_json"

    def __call__(self, prompt, sample):
        try:
            json.loads(sample.response)
        except json.JSONDecodeError as e:
            return f"The response is not valid JSON ({e.msg} at character {e.pos})."
        return None


CheckConfig = Annotated[
    Union[MaxWords, MinWords, MaxSentences, BannedPhrases, RequiredKeywords, Finished, NoLists,
          Regex, MaxChars, MinChars, StartsWith, EndsWith, ValidJson],
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
        problems = [p for c in self.config.checks if (p := c(prompt, sample)) is not None]
        passed = len(self.config.checks) - len(problems)
        return Judgment(
            sample_id=sample.id,
            verdict="negative" if problems else "positive",
            score=passed / len(self.config.checks),
            critique=" ".join(problems) if problems else self.config.pass_critique,
            judge=self.name,
            latency_s=time.perf_counter() - start,
        )

    async def judge(self, prompts: Sequence[Prompt], samples: Sequence[Sample]) -> list[Judgment]:
        return [self.judge_one(p, s) for p, s in zip(prompts, samples, strict=True)]
