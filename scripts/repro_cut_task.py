"""The toy task for the CUT reproduction: six-word answers where each word is a forbidden word
with probability p, a rule judge that names the forbidden words used, and a tiny chat model
pretrained on plain and judgment-conditioned sequences so that it follows judgments in
context (the property CUT's token detection relies on).

Every judgment the model sees, in pretraining and in training, is what the alignloop code
produces: the rule judge's critique, put into the prompt by CUT's `judgment_messages` with
the default `CUTOptions.judgment_template`.

Run through the suite: .venv/bin/python scripts/reproduce.py --only cut
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from alignloop.judges.rules import BannedPhrases, Regex, RulesJudge, RulesJudgeConfig
from alignloop.policies.model import render_prompt
from alignloop.policies.objectives.base import Example
from alignloop.policies.objectives.cut import judgment_messages
from alignloop.policies.objectives.options import DEFAULT_JUDGMENT_TEMPLATE
from alignloop.policies.tiny import build_tiny_model
from alignloop.records import Judgment, Message, Prompt, Sample

GOOD = ["sun", "tree", "bird", "stone"]
# Many forbidden words, so that naming one makes it far more likely (a ratio >= 5.9, see
# repro_cut.THRESHOLD). None is a substring of another answer word: BannedPhrases matches
# substrings (whole_words off, so its sentence says "phrase", as the critique wording below).
FORBIDDEN = [
    "bad",
    "ugly",
    "dumb",
    "evil",
    "rude",
    "vile",
    "lazy",
    "mean",
    "cold",
    "dull",
    "weak",
    "sick",
    "grim",
    "foul",
    "sour",
    "dark",
]
LENGTH = 6
MALFORMED = "The response is malformed."
# Every word of the judgment template, of the judge's sentences and of the instruction, so
# that none is <unk>.
TEMPLATE_WORDS = (
    "Write a response that matches the following judgment of it Judgment "
    'The uses banned phrase phrases " meets every requirement is malformed describe'
).split()
WORDS = list(dict.fromkeys(TEMPLATE_WORDS + GOOD + FORBIDDEN))


def judge() -> RulesJudge:
    """Names each forbidden word used ('The response uses the banned phrases "bad", "evil".');
    an answer that is not six answer words (a degenerate model's output) is flawed too."""
    word = "(?:" + "|".join(GOOD + FORBIDDEN) + ")"
    return RulesJudge(
        RulesJudgeConfig(
            checks=[
                BannedPhrases(phrases=FORBIDDEN),
                Regex(pattern=rf"^{word}(?: {word}){{{LENGTH - 1}}}$", must="match", message=MALFORMED),
            ]
        )
    )


def prompt(pid: str, topic: str) -> Prompt:
    return Prompt(id=pid, messages=[Message(role="user", content=f"describe the {topic}")])


def prompts(prefix: str, n: int, rng: np.random.Generator) -> list[Prompt]:
    return [prompt(f"{prefix}{i}", GOOD[rng.integers(len(GOOD))]) for i in range(n)]


def answer(p_forbidden: float, rng: np.random.Generator) -> list[str]:
    """Each position is forbidden with probability p; a forbidden word is drawn among those
    not used yet (no repeats, so the judgment's list says exactly which words are wrong)."""
    unused, words = list(FORBIDDEN), []
    for _ in range(LENGTH):
        if rng.random() < p_forbidden:
            words.append(unused.pop(rng.integers(len(unused))))
        else:
            words.append(GOOD[rng.integers(len(GOOD))])
    return words


def build_base(out_dir: Path, seed: int = 0, hidden: int = 64, init_std: float = 0.12) -> Path:
    """policies/tiny.py's random 2-layer chat model and tokenizer, with its weights drawn
    again at std `init_std` instead of transformers' 0.02: at 0.02 the tiny model needs
    several times more steps before it starts to copy the words a judgment names."""
    from transformers import AutoConfig, AutoModelForCausalLM

    build_tiny_model(out_dir, WORDS, seed=seed, hidden=hidden, layers=2)
    config = AutoConfig.from_pretrained(out_dir)
    config.initializer_range = init_std
    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(config).save_pretrained(out_dir)
    return out_dir


def pretrain(
    model_dir: Path, p_forbidden: float, steps: int, seed: int = 0, batch: int = 32, lr: float = 3e-3, log=print
) -> float:
    """Full-parameter training (plain torch loop, AdamW, one-cycle schedule) on the task's
    answers, half under the plain prompt and half under the prompt carrying their judgment,
    saved in place. Returns the mean loss of the last 10% of steps."""
    from transformers import AutoModelForCausalLM

    from alignloop.policies.model import load_tokenizer

    tok = load_tokenizer(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    rng = np.random.default_rng([seed, 7, int(p_forbidden * 1000)])
    rules = judge()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.05)
    model.train()
    losses = []
    for step in range(steps):
        ids, labels = zip(*(sequence(tok, rules, p_forbidden, rng) for _ in range(batch)))
        input_ids, attention, targets = pad_right(ids, labels, tok.pad_token_id)
        loss = model(input_ids=input_ids, attention_mask=attention, labels=targets).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if (step + 1) % max(1, steps // 4) == 0:
            log(f"  pretrain p={p_forbidden}: step {step + 1}/{steps}, loss {np.mean(losses[-50:]):.3f}")
    model.save_pretrained(model_dir)
    return float(np.mean(losses[-max(1, steps // 10) :]))


def sequence(tok, rules: RulesJudge, p_forbidden: float, rng: np.random.Generator) -> tuple[list[int], list[int]]:
    """One training sequence: (token ids, labels with -100 on the prompt)."""
    words = answer(p_forbidden, rng)
    p = prompt("pre", GOOD[rng.integers(len(GOOD))])
    sample = Sample(id="pre", prompt_id=p.id, response=" ".join(words), policy_version=0)
    messages = p.messages
    if rng.random() < 0.5:  # judgment-conditioned, as CUT and Hindsight render it (their default template)
        critique = rules.judge_one(p, sample).critique
        messages = judgment_messages(
            Example(p, sample, Judgment(sample_id="pre", judge="rules")), DEFAULT_JUDGMENT_TEMPLATE, critique
        )
    context = render_prompt(tok, messages)
    response = tok(sample.response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    return context + response, [-100] * len(context) + response


def pad_right(ids, labels, pad: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    width = max(map(len, ids))
    input_ids = torch.tensor([s + [pad] * (width - len(s)) for s in ids])  # (B, L)
    attention = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in ids])  # (B, L)
    targets = torch.tensor([s + [-100] * (width - len(s)) for s in labels])  # (B, L)
    return input_ids, attention, targets
