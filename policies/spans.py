"""From a judgment's character spans to the sampled tokens they cover.

The offsets of each token are computed from the token ids themselves (decoding ever longer
prefixes, as the sampler decoded the whole), never by re-tokenising the text: a text can
tokenise differently from how it was sampled, and the loss is over the sampled ids.

Conventions, in the response's own coordinates (the sampler strips surrounding whitespace):
- a token covers the characters its bytes complete; the bytes of one character split over
  several tokens (byte-level BPE) give every one of those tokens that character;
- a special token (the end-of-turn token, after the text) covers no character and sits at
  the offset where it was sampled;
- a span [start, end) with end > start covers every token whose characters overlap it, and a
  special token strictly inside it;
- an empty span [o, o) covers the token at offset o: the one whose characters contain o, or
  the special token sampled there. At the end of the text that is the end-of-turn token
  ("it stopped where it should not have"); a response cut off at the token limit has none,
  and the span covers nothing.
"""

from __future__ import annotations

from typing import cast

from alignloop.records import Span

REPLACEMENT = "\ufffd"  # what a decoder shows for an incomplete UTF-8 sequence


def token_char_ranges(tokenizer, token_ids: list[int], response: str) -> list[tuple[int, int]] | None:
    """Per token, [start, end) in `response`; None when the ids do not decode to the response
    (the record was edited, or the tokenizer is not the sampler's): the caller counts that and
    falls back, rather than marking the wrong tokens."""
    full = tokenizer.decode(token_ids, skip_special_tokens=True)
    lead = len(full) - len(full.lstrip())
    if full.strip() != response:
        return None
    ranges: list[tuple[int, int] | None] = [None] * len(token_ids)
    prev, pending = 0, []
    for k in range(len(token_ids)):
        text = tokenizer.decode(token_ids[: k + 1], skip_special_tokens=True)
        pending.append(k)
        if text.endswith(REPLACEMENT) and not full.startswith(text):
            continue  # this token's bytes end mid-character; the character goes to all of its tokens
        if not full.startswith(text) or len(text) < prev:
            return None  # a decoder that rewrites earlier text (space clean-up): no stable offsets
        for j in pending:
            ranges[j] = (prev, len(text))
        prev, pending = len(text), []
    for j in pending:
        ranges[j] = (prev, len(full))

    def clamp(x: int) -> int:
        return min(max(x - lead, 0), len(response))

    # Every token was pending once and every pending token got a range, so none is left None.
    return [(clamp(a), clamp(b)) for a, b in cast(list[tuple[int, int]], ranges)]


def covered_tokens(ranges: list[tuple[int, int]], special: list[bool], spans: list[Span]) -> list[bool]:
    """Per token, whether a span covers it (see the module docstring)."""
    out = [False] * len(ranges)
    for s in spans:
        if s.end > s.start:
            for k, ((a, b), sp) in enumerate(zip(ranges, special)):
                if (a < s.end and s.start < b) if not sp else s.start < a < s.end:
                    out[k] = True
        else:
            hit = next(
                (
                    k
                    for k, ((a, b), sp) in enumerate(zip(ranges, special))
                    if (a <= s.start < b and not sp) or (sp and a == s.start)
                ),
                None,
            )
            if hit is not None:
                out[hit] = True
    return out


def span_token_mask(tokenizer, token_ids: list[int], response: str, spans: list[Span]) -> list[bool] | None:
    """Per sampled token, whether a judged span covers it; None when offsets cannot be had."""
    ranges = token_char_ranges(tokenizer, token_ids, response)
    if ranges is None:
        return None
    special = set(tokenizer.all_special_ids)
    return covered_tokens(ranges, [t in special for t in token_ids], spans)
