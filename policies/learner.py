"""The learner: a PEFT LoRA adapter on the policy, one objective, AdamW state kept across
iterations, and adapter export for publishing.

One iteration is one call, `learn(examples, iteration)`, so a learner in another process costs
one round trip per iteration; `progress()` answers from another thread meanwhile, which is
how a caller shows a progress bar.
"""

from __future__ import annotations

import io
import math
import os
import tempfile
import time
from typing import TYPE_CHECKING, cast

import numpy as np
import torch
from peft import LoraConfig, PeftModel, get_peft_model, set_peft_model_state_dict
from safetensors.torch import load as load_safetensors
from transformers import DynamicCache

from alignloop.policies.adapter import AdapterPayload
from alignloop.policies.model import (
    cache_argument,
    left_pad,
    load_model,
    load_tokenizer,
    pick_device,
    render_prompt,
    resolve_model_path,
)
from alignloop.policies.objectives.base import Example, TrainBatch
from alignloop.policies.objectives.registry import build_objective
from alignloop.policies.spans import span_token_mask
from alignloop.records import merge_metrics

if TYPE_CHECKING:
    from alignloop.policies.distributed import RankGroup


class Learner:
    def __init__(self, model_cfg, learner_cfg, temperature: float = 1.0, seed: int = 0):
        model_path = resolve_model_path(model_cfg.path)
        # By default an actor uses every core of its node (Ray would otherwise pin it to
        # OMP_NUM_THREADS=1): learning has the node to itself unless the run samples ahead
        # (asynchronous.max_staleness), where `threads` splits the cores.
        torch.set_num_threads(learner_cfg.threads or os.cpu_count() or 1)
        self.cfg, self.seed, self.temperature = learner_cfg, seed, temperature
        self.device = pick_device(learner_cfg.device)
        self.tokenizer = load_tokenizer(model_path)
        base = load_model(model_path, model_cfg.dtype, self.device)
        torch.manual_seed(seed)  # the LoRA initialisation is part of the run's seed
        if model_cfg.adapter:
            self.model = PeftModel.from_pretrained(base, model_cfg.adapter, is_trainable=True)
        else:
            lora = model_cfg.lora
            self.model = get_peft_model(
                base,
                LoraConfig(
                    r=lora.r,
                    lora_alpha=lora.alpha,
                    lora_dropout=lora.dropout,
                    target_modules=list(lora.target_modules),
                    task_type="CAUSAL_LM",
                ),
            )
        self.objective = build_objective(learner_cfg.objective)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        # bf16: the forward passes run under bfloat16 autocast while the LoRA weights stay the
        # float32 master copy (PEFT already keeps them float32 over a bfloat16 base), so their
        # small updates are not rounded away and AdamW's state is float32 too.
        self.autocast = learner_cfg.precision == "bf16"
        if self.autocast:
            for p in self.params:
                p.data = p.data.float()
        self.optimizer = torch.optim.AdamW(self.params, lr=learner_cfg.lr, weight_decay=learner_cfg.weight_decay)
        self.version = 0
        self._old: dict[str, list[float]] = {}  # sample id -> log-probs of the sampling policy
        self._spans: dict[str, list[float] | None] = {}  # sample id -> per-token span cover
        # (steps done, steps planned); replaced whole, never mutated, so that progress() can
        # read it from another thread while learn() runs (one attribute read is atomic).
        self._progress: tuple[int, int] = (0, 0)
        # Set when this learner is one rank of several (policies/distributed.py); None: alone.
        self.group: RankGroup | None = None

    # weights -------------------------------------------------------------------------------
    def export(self) -> AdapterPayload:
        """The current adapter as bytes, in the standard PEFT directory format."""
        with tempfile.TemporaryDirectory() as tmp:
            self.model.save_pretrained(tmp)
            return AdapterPayload.from_dir(tmp, self.version)

    def state_bytes(self) -> bytes:
        """Everything besides the adapter that a resumed run needs to continue exactly."""
        buf = io.BytesIO()
        torch.save({"optimizer": self.optimizer.state_dict(), "version": self.version}, buf)
        return buf.getvalue()

    def restore(self, payload: AdapterPayload, state: bytes | None, version: int | None = None) -> None:
        """Continue from `payload` and, when given, the optimizer state saved with it (None:
        a fresh optimizer). The next adapter is `version + 1` (default: the saved version)."""
        payload.verify()
        set_peft_model_state_dict(self.model, load_safetensors(payload.weights))
        saved = torch.load(io.BytesIO(state), map_location=self.device, weights_only=True) if state else None
        if saved is not None:
            self.optimizer.load_state_dict(saved["optimizer"])
        self.version = version if version is not None else saved["version"] if saved else payload.version

    # one iteration -------------------------------------------------------------------------
    def learn(self, examples: list[Example], iteration: int, version: int | None = None) -> dict:
        """Train one iteration on `examples`: select the rows, plan the minibatches, take every
        optimizer step, and number the new adapter `version` (default: the next one; a nightly
        round numbers it after its series, which may hold rejected versions above the one it
        started from). Returns the learn metrics: the step metrics averaged over the steps,
        then the selection's."""
        t0 = time.perf_counter()
        self._progress = (0, 0)
        plan, selected = self._begin(examples, iteration)
        self._progress = (0, len(plan))
        log = []
        for k, rows in enumerate(plan):
            log.append(self._step(rows, k, len(plan)))
            self._progress = (k + 1, len(plan))
        self.version = version if version is not None else self.version + 1
        return merge_metrics(mean_metrics(log), selected, {"steps": len(log), "learn_s": time.perf_counter() - t0})

    def progress(self) -> tuple[int, int]:
        """(optimizer steps done, steps planned) of the iteration learn() is running, or of the
        last one; (0, 0) while it is still selecting and planning. Safe from another thread."""
        return self._progress

    def _begin(self, examples: list[Example], iteration: int) -> tuple[list[list[Example]], dict]:
        """Select the rows, fix what stays fixed over the iteration (span covers, the sampling
        policy's log-probs), plan the minibatches; returns the plan and the selection metrics."""
        rng = np.random.default_rng([self.seed, iteration])
        torch.manual_seed(self.seed * 1_000_003 + iteration)  # LoRA dropout
        rows, selected = self.objective.select(examples, rng)
        metrics = merge_metrics(selected, sampling_entropy(examples), advantage_stats(rows))
        self._old, self._spans = {}, {}
        if self.objective.needs_spans:
            metrics = merge_metrics(metrics, self.map_spans(rows))
        if self.objective.needs_old_logprobs:
            self._old, gap = self.fix_old_logprobs(rows)
            metrics = merge_metrics(metrics, gap)
        if self.group is not None:  # each rank draws its own LoRA dropout masks
            torch.manual_seed((self.seed * 1_000_003 + iteration) * 1_009 + self.group.rank)
        return self._plan(rows, rng), metrics

    def _plan(self, rows: list[Example], rng: np.random.Generator) -> list[list[Example]]:
        """The rows of each optimizer step: every epoch shuffles whole units (pairs stay pairs)
        and cuts them into minibatches."""
        unit = self.objective.unit
        units = [rows[i : i + unit] for i in range(0, len(rows), unit)]
        per_step = max(1, self.cfg.minibatch_size // unit)
        plan = []
        for _ in range(self.cfg.epochs):
            order = rng.permutation(len(units))
            for s in range(0, len(units), per_step):
                plan.append([row for u in order[s : s + per_step] for row in units[u]])
        if self.cfg.prefix_sharing:  # a prompt's rows side by side, so micro-batches share its pass
            plan = [by_prompt(rows) for rows in plan]
        return plan

    def _step(self, rows: list[Example], step: int, total: int) -> dict:
        """One optimizer step over `rows`, micro-batch by micro-batch; returns its metrics
        (each micro-batch's weighted by its share of the rows)."""
        if self.group is not None:
            return self._group_step(rows, step, total, self.group)
        self._set_lr(step, total)
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        metrics: dict[str, float] = {}
        cover: dict[str, float] = {}
        unit = self.objective.unit
        micro = max(unit, self.cfg.micro_batch_size // unit * unit)  # a micro-batch never splits a pair
        for s in range(0, len(rows), micro):
            chunk = rows[s : s + micro]
            batch = self.batch(chunk)
            loss, m = self.objective.loss(batch)
            (loss * len(chunk) / len(rows)).backward()
            for key, value in merge_metrics({"loss": loss.item()}, m, reference_kl(batch)).items():
                metrics[key] = metrics.get(key, 0.0) + value * len(chunk) / len(rows)
                cover[key] = cover.get(key, 0.0) + len(chunk) / len(rows)
        metrics = over_reporting(metrics, cover)
        optimizer = {}
        if self.cfg.max_grad_norm:
            optimizer["grad_norm"] = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.max_grad_norm).item()
        self.optimizer.step()
        optimizer["lr"] = self.optimizer.param_groups[0]["lr"]
        return merge_metrics(metrics, optimizer)

    def _group_step(self, rows: list[Example], step: int, total: int, group: RankGroup) -> dict:
        """_step as one rank of `group`: every rank cuts the same micro-batches, trains on its
        part of each (units balanced by tokens), weighs its part's loss by the part's share of
        what the objective averages over in the whole micro-batch (summed over the ranks), and
        the gradients and metrics are summed over the ranks before the same optimizer step."""
        self._set_lr(step, total)
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        unit = self.objective.unit
        micro = max(unit, self.cfg.micro_batch_size // unit * unit)
        chunks = [rows[s : s + micro] for s in range(0, len(rows), micro)]
        parts = [self._my_part(chunk, group) for chunk in chunks]
        counts = [self.objective.averages_over(self._mask(part)) if part else 0.0 for part in parts]
        totals = group.sum(counts, self.device)  # what each whole micro-batch averages over
        metrics: dict[str, float] = {}
        cover: dict[str, float] = {}
        for chunk, part, count, whole in zip(chunks, parts, counts, totals):
            if group.sharded and not part:  # every rank must run every forward: a stand-in row, weighted 0
                part = chunk[:unit]
            if not part or not whole:
                continue
            weight = count / whole * len(chunk) / len(rows)
            batch = self.batch(part)
            loss, m = self.objective.loss(batch)
            (loss * weight).backward()
            for key, value in merge_metrics({"loss": loss.item()}, m, reference_kl(batch)).items():
                metrics[key] = metrics.get(key, 0.0) + value * weight
                cover[key] = cover.get(key, 0.0) + weight
        group.sum_grads(self.params)
        metrics = over_reporting(group.sum_metrics(metrics), group.sum_metrics(cover))
        optimizer = {}
        if self.cfg.max_grad_norm:
            norm = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.max_grad_norm)
            optimizer["grad_norm"] = getattr(norm, "full_tensor", lambda: norm)().item()  # sharded: a DTensor
        self.optimizer.step()
        optimizer["lr"] = self.optimizer.param_groups[0]["lr"]
        return merge_metrics(metrics, optimizer)

    def _my_part(self, chunk: list[Example], group: RankGroup) -> list[Example]:
        """This rank's rows of a micro-batch: whole units (pairs stay pairs), balanced over the
        ranks by prompt and response tokens."""
        unit = self.objective.unit
        units = [chunk[i : i + unit] for i in range(0, len(chunk), unit)]
        costs = [
            sum(len(self.response_ids(e)) + len(render_prompt(self.tokenizer, e.prompt.messages)) for e in u)
            for u in units
        ]
        return [e for i in group.my_part(costs) for e in units[i]]

    def _mask(self, rows: list[Example]) -> torch.Tensor:
        responses = [self.response_ids(e) for e in rows]
        return response_mask(responses, max(map(len, responses)), self.device)

    def _set_lr(self, step: int, total: int) -> None:
        lr = self.cfg.lr
        if step < self.cfg.warmup_steps:
            lr *= (step + 1) / self.cfg.warmup_steps
        elif self.cfg.schedule == "cosine":
            done = (step - self.cfg.warmup_steps) / max(1, total - self.cfg.warmup_steps)
            lr *= 0.5 * (1 + math.cos(math.pi * done))
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    # tensors -------------------------------------------------------------------------------
    def response_ids(self, example: Example) -> list[int]:
        """The sampled token ids (end-of-turn included when the response stopped), or, for
        records without ids, the tokenized text plus the end-of-turn token."""
        if example.sample.token_ids is not None:
            return list(example.sample.token_ids)
        ids = self.tokenizer(example.sample.response, add_special_tokens=False)["input_ids"]
        return ids + [self.tokenizer.eos_token_id]

    def batch(self, rows: list[Example]) -> TrainBatch:
        responses = [self.response_ids(e) for e in rows]
        b, t = len(rows), max(map(len, responses))
        # Every (context, row) pair the objective asks for goes through the model in one
        # forward pass; a row that does not need a context (None) is left out and reads as 0.
        jobs = [
            (c, i, render_prompt(self.tokenizer, msgs))
            for c in self.objective.contexts
            for i, e in enumerate(rows)
            if (msgs := self.objective.context_messages(c, e)) is not None
        ]
        # A context the objective reads only as a target (a teacher's) goes through a forward
        # pass of its own without gradient, so the backward pass never runs through it.
        detached = set(self.objective.detached_contexts)
        by_job: dict[tuple[str, int], torch.Tensor] = {}
        for grad in (True, False):
            part = [job for job in jobs if (job[0] in detached) != grad]
            if not part:
                continue
            with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
                lp, _ = self.token_logprobs([p for _, _, p in part], [responses[i] for _, i, _ in part])  # (J, T')
            lp = torch.nn.functional.pad(lp, (t - lp.shape[1], 0))  # (J, T): responses stay right-aligned
            by_job.update({(c, i): lp[k] for k, (c, i, _) in enumerate(part)})
        zero = torch.zeros(t, device=self.device)
        plain = [render_prompt(self.tokenizer, e.prompt.messages) for e in rows]  # the sampling context
        mask = response_mask(responses, t, self.device)
        # Each context's log-probs go to the TrainBatch field of that name, each declared
        # per-row value likewise: what the objective declared, and nothing else.
        fields: dict[str, torch.Tensor] = {
            c: torch.stack([by_job.get((c, i), zero) for i in range(b)]) for c in self.objective.contexts
        }
        fields.update(self.objective.row_tensors(rows, self.device).items())
        if self.objective.needs_reference:
            with torch.no_grad(), self.model.disable_adapter():
                fields["ref_logprobs"], _ = self.token_logprobs(plain, responses)
        if self.objective.needs_old_logprobs:
            fields["old_logprobs"] = self.old_logprobs(rows, mask)
        if self.objective.needs_spans:
            self.map_spans([e for e in rows if e.sample.id not in self._spans])
            cover = [self._spans[e.sample.id] for e in rows]
            fields["span_mask"] = torch.tensor(
                [[0.0] * (t - len(c or ())) + (c or []) for c in cover], device=self.device
            )  # right-aligned, as the mask
            fields["has_spans"] = torch.tensor([float(c is not None) for c in cover], device=self.device)
        return TrainBatch(mask=mask, **fields)

    def map_spans(self, rows: list[Example]) -> dict[str, float]:
        """Fix, per sample id, which response tokens its judgment's spans cover (None: the
        judgment gave no spans, or they could not be mapped, which is counted)."""
        failed = 0
        for e in rows:
            spans = e.judgment.spans
            cover = None
            if spans:
                mask = span_token_mask(self.tokenizer, self.response_ids(e), e.sample.response, spans)
                failed += mask is None
                cover = None if mask is None else [float(m) for m in mask]
            self._spans[e.sample.id] = cover
        return {"span_alignment_failures": failed}

    def old_logprobs(self, rows: list[Example], mask: torch.Tensor) -> torch.Tensor:
        """(B, T) log-probs of the sampling policy, as fixed when the iteration began; rows it
        did not see (a direct batch() call) are fixed now, from the current policy."""
        missing = [e for e in rows if e.sample.id not in self._old]
        if missing:
            self._old.update(self.fix_old_logprobs(missing)[0])
        t = mask.shape[1]
        old = [self._old[e.sample.id] for e in rows]
        return torch.tensor([[0.0] * (t - len(o)) + o for o in old], device=self.device)

    def fix_old_logprobs(self, rows: list[Example]) -> tuple[dict[str, list[float]], dict]:
        """Per sample id, the log-probs pi_old of the importance ratio, fixed before the first
        update of the iteration: recomputed at every step they would track the policy being
        trained, the ratio would stay 1 and the clip would never act over several epochs.

        The sampler's log-probs are the behaviour policy's own and are used when present and
        aligned with the token ids; only rows without them cost a forward pass here. On the
        first `logprob_check_rows` rows that have them the learner's own are computed too:
        their mean absolute gap per token is the off-policy error (different kernels or
        dtypes, a stale adapter) that the ratio corrects, checked on a sample rather than
        paid for on every row."""
        unique = list({e.sample.id: e for e in rows}.values())
        given = [e for e in unique if aligned_logprobs(e)]
        missing = [e for e in unique if not aligned_logprobs(e)]
        stale = [e for e in missing if e.sample.policy_version != self.version]
        if stale:  # recomputed now, pi_old would be this policy, not the one that sampled
            raise ValueError(
                f"sample {stale[0].sample.id} was drawn by adapter v{stale[0].sample.policy_version} and carries no "
                f"log-probs for its tokens, and the learner is at v{self.version}: the importance ratio needs the "
                "sampler's log-probs (every built-in sampler returns them; a custom one must fill Sample.logprobs)"
            )
        checked = given[: self.cfg.logprob_check_rows]
        computed = self.sequence_logprobs(missing + checked)
        # aligned_logprobs() holds for every row of `given`: their logprobs are not None
        old = {e.sample.id: list(cast(list[float], e.sample.logprobs)) for e in given}
        old.update({e.sample.id: lp for e, lp in zip(missing, computed)})
        gaps = [
            abs(a - b)
            for e, mine in zip(checked, computed[len(missing) :])
            for a, b in zip(cast(list[float], e.sample.logprobs), mine)
        ]
        metrics: dict[str, float] = {"n_old_logprobs_recomputed": len(missing), "n_old_logprobs_checked": len(checked)}
        if gaps:
            metrics["old_logprob_gap"] = float(np.mean(gaps))
        return old, metrics

    @torch.no_grad()
    def sequence_logprobs(self, rows: list[Example]) -> list[list[float]]:
        """Each row's response token log-probs under the current policy, in eval mode (as the
        sampler runs), micro-batch by micro-batch."""
        was_training = self.model.training
        self.model.eval()
        out: list[list[float]] = []
        for s in range(0, len(rows), self.cfg.micro_batch_size):
            chunk = rows[s : s + self.cfg.micro_batch_size]
            responses = [self.response_ids(e) for e in chunk]
            prompts = [render_prompt(self.tokenizer, e.prompt.messages) for e in chunk]
            lp, _ = self.token_logprobs(prompts, responses)  # (b, T)
            out += [lp[i, lp.shape[1] - len(r) :].tolist() for i, r in enumerate(responses)]
        self.model.train(was_training)
        return out

    def token_logprobs(self, prompts: list[list[int]], responses: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """log pi(y_t | prompt, y_<t) for every response token, at the sampling temperature.

        Sequences are left-padded so every response ends at the last position; the model then
        computes logits for the last T+1 positions only. Returns (N, T) log-probs and the (N, T)
        mask, responses right-aligned.
        """
        if self.cfg.prefix_sharing and len(set(map(tuple, prompts))) < len(prompts):
            return self._shared_prompt_logprobs(prompts, responses)
        t = max(map(len, responses))
        ids, attn = left_pad([p + r for p, r in zip(prompts, responses)], self.tokenizer.pad_token_id, self.device)
        positions = (attn.cumsum(-1) - 1).clamp(min=0)
        device_type = torch.device(self.device).type
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=self.autocast):
            out = self.model(input_ids=ids, attention_mask=attn, position_ids=positions, logits_to_keep=t + 1)
        logits = out.logits[:, :-1].float() / self.temperature  # (N, T, V): position i predicts token i+1
        targets = ids[:, -t:]  # (N, T)
        lp = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)
        mask = response_mask(responses, t, self.device)
        return lp * mask, mask

    def _shared_prompt_logprobs(
        self, prompts: list[list[int]], responses: list[list[int]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """token_logprobs with each distinct prompt through the model once (learner.prefix_sharing):
        its KV cache and its last position's logits (which predict the first response token)
        serve every response to it, and every response's gradient flows back into that one
        prompt pass. The same numbers up to float rounding, for less compute when prompts repeat
        (a group of k samples shares its prompt); LoRA dropout then draws one mask for the
        prompt's tokens where separate passes would draw k."""
        pad, device = self.tokenizer.pad_token_id, self.device
        unique = list(dict.fromkeys(map(tuple, prompts)))
        slot = {p: u for u, p in enumerate(unique)}
        which = torch.tensor([slot[tuple(p)] for p in prompts], device=device)  # (N,) row -> its prompt
        t = max(map(len, responses))
        # Prompts left-padded (each ends where its response starts), responses right-padded.
        ids, attn = left_pad(unique, pad, device)  # (U, W)
        targets = torch.tensor([r + [pad] * (t - len(r)) for r in responses], device=device)  # (N, T)
        seen = torch.tensor([[1] * len(r) + [0] * (t - len(r)) for r in responses], device=device)
        kv = DynamicCache()
        cache = {cache_argument(self.model): kv}
        positions = (attn.cumsum(-1) - 1).clamp(min=0)
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=self.autocast):
            first = self.model(input_ids=ids, attention_mask=attn, position_ids=positions, logits_to_keep=1, **cache)
            logits = first.logits[which]  # (N, 1, V): predicts each response's first token
            if t > 1:  # the responses but their last token, which predicts nothing
                kv.batch_select_indices(which)
                after = attn.sum(-1)[which, None] + torch.arange(t - 1, device=device)  # positions go on
                rest = self.model(
                    input_ids=targets[:, :-1],
                    attention_mask=torch.cat([attn[which], seen[:, :-1]], dim=1),
                    position_ids=after,
                    **cache,
                )
                logits = torch.cat([logits, rest.logits], dim=1)  # (N, T, V)
        logits = logits.float() / self.temperature
        lp = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)  # (N, T), left-aligned
        lengths = torch.tensor([len(r) for r in responses], device=device)
        source = (torch.arange(t, device=device) - (t - lengths)[:, None]).clamp(min=0)
        mask = response_mask(responses, t, device)
        return lp.gather(1, source) * mask, mask  # right-aligned, as token_logprobs returns them


def by_prompt(rows: list[Example]) -> list[Example]:
    """The rows of one step with each prompt's rows side by side, prompts in order of first
    appearance (the step's gradient is their sum, whatever the order). A unit of several rows
    (a DPO pair) shares one prompt, so it stays whole."""
    first: dict[str, int] = {}
    for e in rows:
        first.setdefault(e.prompt.id, len(first))
    return sorted(rows, key=lambda e: first[e.prompt.id])


def aligned_logprobs(e: Example) -> bool:
    """The sample carries the sampler's log-prob of every one of its token ids."""
    s = e.sample
    return s.logprobs is not None and s.token_ids is not None and len(s.logprobs) == len(s.token_ids)


def sampling_entropy(examples: list[Example]) -> dict[str, float]:
    """Entropy estimate of the policy that sampled: -mean log-prob of the sampled tokens."""
    lps = [lp for e in examples for lp in (e.sample.logprobs or ())]
    return {"entropy": -float(np.mean(lps))} if lps else {}


def advantage_stats(rows: list[Example]) -> dict[str, float]:
    """Mean and std of the advantages of the rows trained on, for objectives that set them."""
    adv = [e.advantage for e in rows if e.advantage is not None]
    return {"advantage_mean": float(np.mean(adv)), "advantage_std": float(np.std(adv))} if adv else {}


def reference_kl(batch: TrainBatch) -> dict[str, float]:
    """KL(pi || pi_ref) per response, estimated on the batch's sampled tokens as the mean over
    rows of sum_t (log pi - log pi_ref), when the objective asked for reference log-probs."""
    if batch.ref_logprobs is None or batch.plain is None:
        return {}
    diff = (batch.plain.detach() - batch.ref_logprobs) * batch.mask  # (B, T)
    return {"kl_ref": diff.sum(-1).mean().item()}


def over_reporting(metrics: dict[str, float], cover: dict[str, float]) -> dict[str, float]:
    """A step's metrics, each a weighted sum over the micro-batches (weights summing to 1),
    made a weighted mean over the micro-batches that report it: a routed objective's route
    reports only where the micro-batch holds its rows. A metric every micro-batch reports is
    left as summed (its cover is 1 up to rounding, and dividing would change its last bits)."""
    return {k: v / cover[k] if 0 < cover[k] < 1 - 1e-9 else v for k, v in metrics.items()}


def mean_metrics(log: list[dict[str, float]]) -> dict[str, float]:
    """Each metric's mean over the steps that report it, keys in sorted order."""
    keys = sorted({k for m in log for k in m})
    return {k: float(np.mean([m[k] for m in log if k in m])) for k in keys}


def response_mask(responses: list[list[int]], t: int, device) -> torch.Tensor:
    """(N, T) 1.0 on each right-aligned response's tokens, 0.0 on the left padding."""
    return torch.tensor([[0.0] * (t - len(r)) + [1.0] * len(r) for r in responses], device=device)
