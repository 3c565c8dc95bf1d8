"""vLLM sampler: a vLLM engine inside the sampler actor, serving each published adapter
version through its own LoRARequest. Same interface as HFSampler.

vLLM is imported when the sampler is built, so this module imports without it. The engine
starts child processes; inside a Ray actor that just works, in a script the entry point
needs an `if __name__ == "__main__"` guard.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

from alignloop.policies.adapter import AdapterPayload, check_serving
from alignloop.policies.model import load_tokenizer, render_prompt, resolve_model_path, sampler_workdir
from alignloop.policies.vllm_engine import build_engine, generate_ids, logprobs_mode, shutdown_engine, stop_ids
from alignloop.records import Prompt, Sample


class VLLMSampler:
    def __init__(self, model_cfg, sampler_cfg, workdir: str | None = None):
        # As HFSampler: the model is resolved on the actor's own node.
        model_path = resolve_model_path(model_cfg.path)
        self.cfg = sampler_cfg
        self.tokenizer = load_tokenizer(model_path)
        self.stop_ids = stop_ids(model_path, self.tokenizer)
        self.logprobs_mode = logprobs_mode(sampler_cfg.temperature, sampler_cfg.top_p)
        opts = sampler_cfg.engine  # the defaults when the config has no vllm block
        self.llm = build_engine(
            model_path,
            model_cfg.dtype,
            opts,
            enable_lora=True,
            max_lora_rank=opts.max_lora_rank,
            max_loras=opts.max_loras,
            # One slot more than the batch may use: the new version loads while the old one
            # is still in the cache, so a failed load leaves the served adapter in place.
            max_cpu_loras=opts.max_loras + 1,
            logprobs_mode=self.logprobs_mode or "raw_logprobs",
        )
        self.workdir = Path(workdir or sampler_workdir())
        self.version: int | None = None
        self.checksum: str | None = None
        self.lora = None  # the LoRARequest served; None: the base model
        self._loads = 0

    # weights -------------------------------------------------------------------------------
    def load_adapter(self, payload: AdapterPayload) -> tuple[int, str]:
        """Materialise the published adapter in this actor's directory, load it into the
        engine as a new LoRARequest, then drop the previous one from the engine and disk."""
        from vllm.lora.request import LoRARequest

        payload.verify()
        # A fresh id and name per load, never per version: vLLM caches adapters by id, so a
        # re-published version with other weights must not hit the old cache entry.
        self._loads += 1
        path = payload.write(self.workdir / f"adapter-v{payload.version}-{self._loads}")
        request = LoRARequest(f"v{payload.version}-{self._loads}", self._loads, str(path))
        self.llm.llm_engine.add_lora(request)  # loads now: a bad adapter fails here, not mid-sampling
        old, self.lora = self.lora, request
        if old is not None:
            self.llm.llm_engine.remove_lora(old.lora_int_id)
        for stale in self.workdir.glob("adapter-v*"):
            if stale != path:
                shutil.rmtree(stale, ignore_errors=True)
        self.version, self.checksum = payload.version, payload.checksum
        return payload.version, payload.checksum  # what serving() now reports

    def serving(self) -> tuple[int | None, str | None]:
        return self.version, self.checksum

    def loaded_adapters(self) -> set[int]:
        """The LoRA ids the engine holds (tests check that old versions are gone)."""
        return set(self.llm.llm_engine.list_loras())

    def close(self) -> None:
        """Stop the engine's processes and remove this actor's adapters (before the kill)."""
        shutdown_engine(self.llm)
        shutil.rmtree(self.workdir, ignore_errors=True)

    # sampling ------------------------------------------------------------------------------
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
        Prompt i gets seed + i*k and vLLM gives its j-th response seed + i*k + j, so the same
        chunk gives the same samples on any replica, whatever else the engine is batching."""
        check_serving(self.serving(), adapter)
        k = n or self.cfg.samples_per_prompt
        ids = [render_prompt(self.tokenizer, p.messages) for p in prompts]
        params = [self.params(seed + i * k, k) for i in range(len(prompts))]
        outputs = generate_ids(self.llm, ids, params, self.lora)
        return [
            self._to_sample(prompt, iteration, j, completion)
            for prompt, out in zip(prompts, outputs)
            for j, completion in enumerate(out.outputs)
        ]

    def params(self, seed: int, n: int | None = None):
        from vllm import SamplingParams

        return SamplingParams(
            n=n or self.cfg.samples_per_prompt,
            temperature=self.cfg.temperature,
            top_p=self.cfg.top_p,
            max_tokens=self.cfg.max_new_tokens,
            min_tokens=self.cfg.min_new_tokens,
            seed=seed,
            stop_token_ids=self.stop_ids,
            # 0 top alternatives: only the sampled token's log-prob comes back.
            logprobs=0 if self.logprobs_mode else None,
            detokenize=False,  # the response text is decoded below, as HFSampler decodes it
        )

    def _to_sample(self, prompt: Prompt, iteration: int, j: int, completion) -> Sample:
        ids = list(completion.token_ids)  # vLLM keeps the stop token when it stopped on one
        finish = {"stop": "stop", "length": "length"}.get(completion.finish_reason)
        if finish is None:
            raise RuntimeError(f"vLLM ended a response with finish_reason={completion.finish_reason!r}")
        stopped_on_token = finish == "stop" and bool(ids) and ids[-1] in self.stop_ids
        text_ids = ids[:-1] if stopped_on_token else ids
        lps = [step[t].logprob for step, t in zip(completion.logprobs, ids)] if completion.logprobs else None
        return Sample(
            id=f"{prompt.id}@{iteration}#{j}",
            prompt_id=prompt.id,
            response=self.tokenizer.decode(text_ids, skip_special_tokens=True).strip(),
            policy_version=self.version if self.version is not None else 0,
            token_ids=ids,
            logprobs=lps,
            finish_reason=finish,
        )
