"""Decoding constrained to a JSON schema, for a transformers model.

After every token, llguidance (the grammar engine behind vLLM's `guidance` structured-output
backend and llama.cpp's grammars) computes the set of tokens that keep the reply inside the
schema, and a logits processor masks out every other one. So even a model too small to follow
a format instruction (the embedded 135M model echoes the prompt's markers instead) writes a
reply that parses. llguidance rather than xgrammar or outlines: it has no Python dependencies
(xgrammar pulls triton into a CPU install, outlines a whole framework), and it builds the
grammar lazily, so a schema with long bounded strings costs nothing up front.
"""

from __future__ import annotations

import json

from alignloop.records.errors import ConfigError

# Every vocabulary fits in 32-bit words of the mask; bit b of word w allows token 32 * w + b.
_BITS = 32


class SchemaConstraint:
    """A JSON schema compiled for one tokenizer (about a second; build it once per model)."""

    def __init__(self, tokenizer, schema: dict, vocab_size: int | None = None, stop_ids: list[int] | None = None):
        """`vocab_size`: the model's logits width, when it is larger than the tokenizer's
        vocabulary; `stop_ids`: the tokens that end a turn (the only ones allowed once the JSON
        value is complete; default the tokenizer's EOS)."""
        import llguidance
        import llguidance.hf

        try:
            self.tokenizer = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size, eos_token=stop_ids)
        except ValueError as e:  # a slow (pure Python) tokenizer, or a decoder llguidance cannot invert
            raise ConfigError(
                f"this judge model's tokenizer cannot drive constrained decoding ({e}); use a model "
                "with a byte-level vocabulary or set judge.constrained: false"
            ) from None
        # Compact JSON: with free whitespace a small model can fill its whole budget with newlines.
        self.grammar = llguidance.LLMatcher.grammar_from_json_schema(
            json.dumps(schema), overrides={"whitespace_flexible": False}
        )
        first = self.matcher()
        if first.is_error() or not any(first.compute_bitmask()):
            raise ConfigError(
                "this judge model's tokenizer cannot write the judgment's JSON "
                f"({first.get_error() or 'no token can start it'}); use a model with a byte-level "
                "vocabulary or set judge.constrained: false"
            )

    def matcher(self):
        import llguidance

        return llguidance.LLMatcher(self.tokenizer, self.grammar, log_level=0)

    def processor(self, rows: int, prompt_width: int) -> SchemaLogitsProcessor:
        return SchemaLogitsProcessor([self.matcher() for _ in range(rows)], prompt_width)


class SchemaLogitsProcessor:
    """A transformers logits processor for one `generate` call over left-padded prompts of
    `prompt_width` tokens: row i may only continue its reply inside the schema."""

    def __init__(self, matchers: list, prompt_width: int):
        self.matchers, self.width = matchers, prompt_width

    def __call__(self, input_ids, scores):
        import torch

        if input_ids.shape[1] > self.width:  # feed each row the token it just got
            for m, token in zip(self.matchers, input_ids[:, -1].tolist()):
                if not m.is_stopped():  # a finished row only gets padding now
                    m.consume_token(token)
        words = (scores.shape[1] + _BITS - 1) // _BITS
        mask = torch.full((len(self.matchers), words), -1, dtype=torch.int32)  # -1: every bit set
        for i, m in enumerate(self.matchers):
            if not m.is_stopped():
                m.unsafe_compute_mask_ptr(mask[i].data_ptr(), words * 4)
        allowed = (mask.unsqueeze(-1) >> torch.arange(_BITS, dtype=torch.int32)) & 1  # (B, words, 32)
        allowed = allowed.reshape(len(self.matchers), -1)[:, : scores.shape[1]]  # (B, V)
        return scores.masked_fill(allowed == 0, float("-inf"))


def preflight(path: str, schema: dict) -> None:
    """On the driver, before any actor starts: the tokenizer of the model at `path` can write
    `schema`. Only where the model is on disk already; a hub id (or an embedded model not yet
    converted) is checked where the judge loads it."""
    from pathlib import Path

    from alignloop.policies.model import EMBEDDED, load_tokenizer, needs_conversion, resolve_model_path

    if path in EMBEDDED and needs_conversion(path):
        return
    local = resolve_model_path(path)
    if Path(local).is_dir():
        SchemaConstraint(load_tokenizer(local), schema)
