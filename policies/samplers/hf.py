"""Hugging Face transformers sampler: batched sampling on CPU (or one GPU), n responses per
prompt, returning token ids and sampling log-probs; through `model.generate`, or through
alignloop's own decoding loop (decode.py, `sampler.decoder: alignloop`)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch
from peft import PeftModel, set_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from safetensors.torch import load as load_safetensors

from alignloop.policies.adapter import AdapterMismatch, AdapterPayload, check_serving
from alignloop.policies.model import (
    left_pad,
    load_model,
    load_tokenizer,
    render_prompt,
    resolve_model_path,
    sampler_workdir,
    stop_token_ids,
)
from alignloop.policies.samplers.decode import sample_tokens
from alignloop.records import Prompt, Sample


class HFSampler:
    def __init__(self, model_cfg, sampler_cfg, workdir: str | None = None):
        # Each actor resolves the model on its own node (an embedded model is converted once
        # per machine), so nothing assumes a filesystem shared with the driver.
        model_path = resolve_model_path(model_cfg.path)
        # By default an actor uses every core of its node (Ray would otherwise pin it to
        # OMP_NUM_THREADS=1): sampling and learning take turns unless the run samples ahead
        # (asynchronous.max_staleness) or streams a local judge, where `threads` splits the cores.
        torch.set_num_threads(sampler_cfg.threads or os.cpu_count() or 1)
        self.cfg = sampler_cfg
        self.device = "cuda" if torch.cuda.is_available() and sampler_cfg.num_gpus > 0 else "cpu"
        self.tokenizer = load_tokenizer(model_path)
        self.model = load_model(model_path, sampler_cfg.dtype or model_cfg.dtype, self.device).eval()
        self.stop_ids = stop_token_ids(self.tokenizer, self.model)
        self.workdir = Path(workdir or sampler_workdir())
        self.version: int | None = None
        self.checksum: str | None = None
        self._adapter_config: dict | None = None
        self._base: dict = {}

    # weights -------------------------------------------------------------------------------
    def load_adapter(self, payload: AdapterPayload) -> tuple[int, str]:
        """Materialise the published adapter in this actor's own directory, then serve it."""
        payload.verify()
        path = payload.write(self.workdir / f"adapter-v{payload.version}")
        if self._adapter_config is None:
            self.model = PeftModel.from_pretrained(self.model, path).eval()
            self._adapter_config = payload.config
            # The base weights of the adapted layers, to go back to them exactly (subtracting
            # the old delta would drift, and a restarted replica would sample differently).
            self._base = (
                {m: m.get_base_layer().weight.detach().clone() for m in self._lora_layers()}
                if self.cfg.merge_adapter
                else {}
            )
        elif payload.config != self._adapter_config:
            raise AdapterMismatch(f"adapter v{payload.version} has a different LoRA config than the one served")
        else:
            if self._base:
                self.model.unmerge_adapter()  # PEFT's bookkeeping; the weights are then put back exactly
                for m, weight in self._base.items():
                    m.get_base_layer().weight.data.copy_(weight)
            set_peft_model_state_dict(self.model, load_safetensors(payload.weights))
        if self._base:
            self.model.merge_adapter()  # W0 + scale * B @ A once, instead of a LoRA branch per token
        for old in self.workdir.glob("adapter-v*"):
            if old != path:
                shutil.rmtree(old, ignore_errors=True)
        self.version, self.checksum = payload.version, payload.checksum
        return payload.version, payload.checksum  # what serving() now reports

    def _lora_layers(self) -> list:
        return [m for m in self.model.modules() if isinstance(m, LoraLayer)]

    def serving(self) -> tuple[int | None, str | None]:
        return self.version, self.checksum

    def close(self) -> None:
        """Remove this actor's materialised adapters (called before the actor is killed)."""
        shutil.rmtree(self.workdir, ignore_errors=True)

    # sampling ------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[Prompt],
        iteration: int,
        seed: int,
        n: int | None = None,
        adapter: tuple[int, str] | None = None,
    ) -> list[Sample]:
        """k = n (default samples_per_prompt) responses for every prompt, prompt-major order,
        from `adapter` (version, checksum) when given: a sampler serving another refuses.
        `seed` fixes the draw, so the same chunk gives the same samples on any replica."""
        check_serving(self.serving(), adapter)
        torch.manual_seed(seed)
        k = n or self.cfg.samples_per_prompt
        prompt_ids = [render_prompt(self.tokenizer, p.messages) for p in prompts]
        decode = sample_tokens if self.cfg.decoder == "alignloop" else self._generate
        new, token_lp = decode(
            self.model,
            prompt_ids,
            k,
            max_new_tokens=self.cfg.max_new_tokens,
            temperature=self.cfg.temperature,
            top_p=self.cfg.top_p,
            stop_ids=self.stop_ids,
            pad_id=self.tokenizer.pad_token_id,
            min_new_tokens=self.cfg.min_new_tokens,
            device=self.device,
        )
        return [
            self._to_sample(prompts[row // k], iteration, row % k, new[row].tolist(), token_lp[row].tolist())
            for row in range(new.shape[0])
        ]

    @staticmethod
    def _generate(
        model, prompt_ids, k, *, max_new_tokens, temperature, top_p, stop_ids, pad_id, min_new_tokens, device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """transformers' generate: ((B*k, T) token ids, (B*k, T) log-probs), as sample_tokens."""
        input_ids, attention = left_pad(prompt_ids, pad_id, device)
        out = model.generate(
            input_ids=input_ids,
            attention_mask=attention,
            do_sample=True,
            temperature=temperature,
            top_p=top_p,
            top_k=0,
            max_new_tokens=max_new_tokens,
            min_new_tokens=min_new_tokens or None,
            num_return_sequences=k,
            eos_token_id=stop_ids,
            pad_token_id=pad_id,
            return_dict_in_generate=True,
            output_logits=True,  # raw logits, (B*k, V) per step: memory ~ B*k*max_new_tokens*V floats
        )
        new = out.sequences[:, input_ids.shape[1] :]  # (B*k, T)
        logits = torch.stack(out.logits, dim=1).float()  # (B*k, T, V)
        logprobs = torch.log_softmax(logits / temperature, dim=-1)
        return new, logprobs.gather(-1, new.unsqueeze(-1)).squeeze(-1)  # (B*k, T)

    def _to_sample(self, prompt: Prompt, iteration: int, j: int, ids: list[int], lps: list[float]) -> Sample:
        # Keep tokens up to and including the first stop token; what follows is padding.
        end = next((i for i, t in enumerate(ids) if t in self.stop_ids), None)
        finish = "stop" if end is not None else "length"
        n = end + 1 if end is not None else len(ids)
        text_ids = ids[: n - 1] if finish == "stop" else ids[:n]
        return Sample(
            id=f"{prompt.id}@{iteration}#{j}",
            prompt_id=prompt.id,
            response=self.tokenizer.decode(text_ids, skip_special_tokens=True).strip(),
            policy_version=self.version if self.version is not None else 0,
            token_ids=ids[:n],
            logprobs=lps[:n],
            finish_reason=finish,
        )
