"""alignloop's own decoding loop for the transformers sampler (`sampler.decoder: alignloop`).

It draws from the same distribution as `model.generate(do_sample=True)` with the sampler's
temperature and top_p, and does less work for it:

- each prompt is prefilled once and its KV cache repeated for its k samples, where generate
  repeats the prompt k times before the prefill (a quarter of the prefill at k = 4);
- a token is drawn by inverting the cumulative distribution with one uniform number per row,
  where torch.multinomial draws an exponential variate for every vocabulary entry (49152 per
  row and step for SmolLM2: most of the time of a step's sampling on a CPU);
- the sampled token's log-prob is taken at each step, where generate's `output_logits` keeps
  every step's full logits until the end (B*k x T x V floats) for a log-softmax over them all;
- it stops as soon as every row has stopped.

The random stream differs from generate's, so the same seed draws other (equally likely)
responses than with `decoder: transformers`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import DynamicCache

from alignloop.policies.model import cache_argument, left_pad


@torch.no_grad()
def sample_tokens(
    model,
    prompts: Sequence[list[int]],
    k: int,
    *,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    stop_ids: Sequence[int],
    pad_id: int,
    min_new_tokens: int = 0,
    device: str | torch.device = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """k responses to each prompt, prompt-major: ((B*k, T) token ids, (B*k, T) log-probs of
    each sampled token under softmax(logits / temperature), before top_p, as the learner scores
    them). T <= max_new_tokens; after its first stop token a row holds `pad_id` (log-prob 0)."""
    ids, attention = left_pad(prompts, pad_id, device)
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    kv = DynamicCache()
    cache = {cache_argument(model): kv}
    out = model(input_ids=ids, attention_mask=attention, position_ids=positions, logits_to_keep=1, **cache)
    logits = out.logits[:, -1]
    # The prompt's cache, its last logits and positions, once per sample.
    kv.batch_repeat_interleave(k)
    logits = logits.repeat_interleave(k, 0)
    attention = attention.repeat_interleave(k, 0)
    position = positions[:, -1:].repeat_interleave(k, 0)
    rows = logits.shape[0]
    stops = torch.tensor(list(stop_ids), device=device)
    done = torch.zeros(rows, dtype=torch.bool, device=device)
    tokens, logprobs = [], []
    for step in range(max_new_tokens):
        scaled = logits.float() / temperature  # (N, V)
        # no stop token yet: their mass goes to the others (the log-probs keep it, as generate's)
        held = scaled.index_fill(-1, stops, -torch.inf) if step < min_new_tokens else scaled
        token = draw(nucleus(held, top_p).softmax(-1))  # (N,)
        lp = scaled.gather(-1, token[:, None]).squeeze(-1) - scaled.logsumexp(-1)
        token = torch.where(done, pad_id, token)
        tokens.append(token)
        logprobs.append(torch.where(done, 0.0, lp))
        done |= torch.isin(token, stops)
        if done.all() or step == max_new_tokens - 1:
            break
        attention = torch.cat([attention, attention.new_ones(rows, 1)], dim=1)
        position = position + 1
        logits = model(input_ids=token[:, None], attention_mask=attention, position_ids=position, **cache).logits[:, -1]
    return torch.stack(tokens, 1), torch.stack(logprobs, 1)


def nucleus(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """(N, V) logits with every token outside the top-p nucleus at -inf: the smallest set of
    most likely tokens whose probability reaches top_p (at least one token stays)."""
    if top_p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(-1, descending=True)
    probs = sorted_logits.softmax(-1)
    before = probs.cumsum(-1) - probs  # the mass of the more likely tokens
    drop_sorted = before >= top_p
    drop_sorted[:, 0] = False
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, -torch.inf)


def draw(probs: torch.Tensor) -> torch.Tensor:
    """One token per row of (N, V) probabilities, by inverse transform sampling: a uniform
    number in [0, total mass) and the first token whose cumulative mass exceeds it (a token
    of probability 0 never is)."""
    cdf = probs.cumsum(-1)
    u = torch.rand(probs.shape[0], 1, device=probs.device, dtype=cdf.dtype) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp(max=probs.shape[-1] - 1)
