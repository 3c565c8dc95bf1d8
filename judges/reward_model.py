"""A local reward model: a transformers sequence-classification model scores each
(prompt, response); the verdict is positive when the score reaches `threshold`.

The score is the single logit of a one-output model (the usual reward-model head), or the
softmax probability of `positive_label` for a classifier with several labels. A reward model
says nothing in words, so the critique is None.
"""

from __future__ import annotations

import math
import time
from typing import Literal, cast

from pydantic import Field

from alignloop.judges.local import LocalModelJudge, LocalModelOptions
from alignloop.judges.prompting import conversation_text
from alignloop.records import Judgment, Prompt, Sample


class RewardModelJudgeConfig(LocalModelOptions):
    type: Literal["reward_model"] = "reward_model"
    name: str = Field("reward_model", description="Recorded as `judge` on every judgment.")
    threshold: float = Field(0.0, description="Scores at or above this get a positive verdict.")
    positive_label: int | None = Field(
        None, ge=0, description="Several-label classifier: score = probability of this label (None: one-output model)."
    )
    max_length: int = Field(2048, gt=0, description="Longest input in tokens; longer ones lose their beginning.")


class RewardModelJudge(LocalModelJudge[RewardModelJudgeConfig]):
    def __init__(self, config: RewardModelJudgeConfig):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from alignloop.policies.model import resolve_model_path

        super().__init__(config, config.name)
        path = resolve_model_path(config.path)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        # Cut from the left: the end of the response is what is being judged.
        self.tokenizer.truncation_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        model = AutoModelForSequenceClassification.from_pretrained(path, dtype=getattr(torch, config.dtype))
        if model.config.pad_token_id is None:  # needed to find each row's last token in a padded batch
            model.config.pad_token_id = self.tokenizer.pad_token_id
        self.model = model.to(self.device).eval()
        check_labels(model.config.num_labels, config.positive_label, config.path)

    def text(self, prompt: Prompt, sample: Sample) -> str:
        """The conversation as the reward model was trained to read it: its own chat template
        when it has one."""
        if getattr(self.tokenizer, "chat_template", None):
            chat = [m.model_dump() for m in prompt.messages] + [{"role": "assistant", "content": sample.response}]
            # tokenize=False returns the rendered text; transformers types the union of every mode
            return cast(str, self.tokenizer.apply_chat_template(chat, tokenize=False))
        return f"{conversation_text(prompt)}\n\n{sample.response}"

    def scores(self, texts: list[str]) -> list[float]:
        import torch

        enc = self.tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=self.config.max_length,
            add_special_tokens=not getattr(self.tokenizer, "chat_template", None),
            return_tensors="pt",
        ).to(self.device)
        with torch.no_grad():
            logits = self.model(**enc).logits.float()  # (B, num_labels)
        if self.config.positive_label is None:
            return logits[:, 0].tolist()
        return logits.softmax(-1)[:, self.config.positive_label].tolist()

    def judge_batch(self, prompts: list[Prompt], samples: list[Sample]) -> list[Judgment]:
        start = time.perf_counter()
        scores = self.scores([self.text(p, s) for p, s in zip(prompts, samples)])
        took = (time.perf_counter() - start) / len(samples)
        return [self.judgment(s, x, took) for s, x in zip(samples, scores)]

    def judgment(self, sample: Sample, score: float, latency: float) -> Judgment:
        if not math.isfinite(score):
            return Judgment(
                sample_id=sample.id,
                judge=self.name,
                latency_s=latency,
                error=f"the reward model gave a non-finite score ({score})",
            )
        verdict = "positive" if score >= self.config.threshold else "negative"
        return Judgment(sample_id=sample.id, verdict=verdict, score=score, judge=self.name, latency_s=latency)


def check_labels(num_labels: int, positive_label: int | None, path: str) -> None:
    if positive_label is None and num_labels != 1:
        raise ValueError(f"{path} has {num_labels} output labels; set judge.positive_label to the one that means good")
    if positive_label is not None and positive_label >= num_labels:
        raise ValueError(f"judge.positive_label is {positive_label} but {path} has only {num_labels} labels")
