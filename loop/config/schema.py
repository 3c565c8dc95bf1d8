"""The run config's schema: pydantic models, extra keys forbidden, a one-line description on
each field, and validators whose message says what to set.

Nothing here imports torch or Ray, so `--dry-run` and config errors answer at once.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from alignloop.judges import JudgeConfig
from alignloop.loop.serving import ServeOptions, ServerOptions
from alignloop.policies.objectives.options import ObjectiveConfig, SFTOptions
from alignloop.policies.vllm_engine import VLLMSamplerOptions
from alignloop.records.secrets import quote


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# Ray's own resources: set by num_cpus / num_gpus, never as custom resources.
BUILTIN_RESOURCES = ("CPU", "GPU", "memory", "object_store_memory")


def _custom_resources(value: dict[str, float]) -> dict[str, float]:
    for name, amount in value.items():
        if name in BUILTIN_RESOURCES:
            raise ValueError(f"{quote(name)} is not a custom resource; set num_cpus / num_gpus instead")
        if not re.fullmatch(r"[A-Za-z0-9_.:/-]+", name):
            raise ValueError(f"resource name {quote(name)}: use letters, digits and _ . : / - (e.g. node_b)")
        if not amount > 0:
            raise ValueError(f"resource {quote(name)}: the amount must be > 0, got {amount}")
    return value


# Custom Ray resources an actor needs, e.g. {node_b: 1}: it then runs only on a node started
# with that resource (`ray start --resources '{"node_b": 4}'`), which is how a config places
# actor groups on nodes.
Resources = Annotated[dict[str, float], AfterValidator(_custom_resources)]
RESOURCES_HELP = "Custom Ray resources per actor, e.g. {node_b: 1}: it runs only on nodes started with them."


class LoraOptions(Strict):
    r: int = Field(16, gt=0, description="LoRA rank.")
    alpha: int = Field(16, gt=0, description="LoRA alpha (scale = alpha / r).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: list[str] = Field(
        ["gate_proj", "up_proj", "down_proj"], min_length=1, description="Module names to adapt."
    )


class ModelConfig(Strict):
    path: str = Field(
        "smollm2-135m-instruct",
        description="Embedded model name, a local Hugging Face directory, or a hub id.",
    )
    adapter: str | None = Field(None, description="PEFT adapter directory to start from (version 0).")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="Weights dtype.")
    lora: LoraOptions = Field(default_factory=LoraOptions)


class DataConfig(Strict):
    path: str = Field(
        description="Prompts: a .jsonl/.parquet file, a directory of them, a glob, a saved HF dataset or hf:<hub id>; `{round}` is a nightly round's id (see docs/configuration.md, 'Prompt data')."
    )
    split: str = Field("train", description="The split of a Hugging Face dataset (saved or hf:<hub id>).")
    columns: dict[str, str] = Field(
        default_factory=dict, description="Rename the data's fields to this schema's, e.g. {instruction: question}."
    )
    prompts_per_iteration: int = Field(16, gt=0, description="Prompts drawn per iteration.")
    shuffle: bool = Field(True, description="Shuffle the order each pass over the dataset.")


class SamplerConfig(Strict):
    backend: Literal["hf", "vllm", "server"] = Field(
        "hf",
        description="Sampling backend (hf: transformers; vllm: a vLLM engine; server: OpenAI-compatible inference "
        "servers, sampler.server).",
    )
    replicas: int = Field(1, gt=0, description="Sampler actors; each batch is split between them.")
    samples_per_prompt: int = Field(4, gt=0, description="Responses per prompt (k).")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass.")
    max_new_tokens: int = Field(64, gt=0, description="Longest response, in tokens.")
    batch_size: int = Field(16, gt=0, description="Prompts per generate call (each has k responses).")
    num_cpus: float = Field(1, ge=0, description="CPUs reserved per sampler actor.")
    num_gpus: float = Field(0, ge=0, description="GPUs per sampler actor.")
    resources: Resources = Field(default_factory=dict, description=RESOURCES_HELP)
    threads: int | None = Field(
        None,
        gt=0,
        description="torch threads (None: every core of the node; with asynchronous.max_staleness sampling and learning overlap: split the cores between them).",
    )
    min_new_tokens: int = Field(
        0, ge=0, description="No stop token before this many new tokens (hf, vllm and server backends)."
    )
    dtype: Literal["float32", "bfloat16", "float16"] | None = Field(
        None, description="hf: the weights' dtype when sampling (None: model.dtype)."
    )
    decoder: Literal["transformers", "alignloop"] = Field(
        "transformers",
        description="hf: transformers' generate, or alignloop's own loop (policies/samplers/decode.py): the same "
        "distribution, each prompt prefilled once for its k samples and a cheaper draw per token, faster on a CPU "
        "(docs/benchmarks.md); the same seed draws other responses than with generate.",
    )
    merge_adapter: bool = Field(
        True,
        description="hf: serve the LoRA merged into the weights (faster sampling in bfloat16 on CPU, within noise in float32; the adapted "
        "layers' base weights are kept once more, to swap versions exactly); false: apply it unmerged.",
    )
    vllm: VLLMSamplerOptions | None = Field(
        None, description="vLLM engine options (backend: vllm; None: the defaults)."
    )
    server: ServerOptions | None = Field(
        None, description="The inference servers (backend: server): URLs, adapter_dir, key, concurrency."
    )

    @property
    def engine(self) -> VLLMSamplerOptions:
        """The vLLM options in force: the defaults when the block is left out (and for hf,
        whose engine is one process on one device: tensor_parallel_size 1)."""
        return self.vllm or VLLMSamplerOptions()

    @model_validator(mode="after")
    def _vllm_options_need_vllm(self) -> SamplerConfig:
        if self.vllm is not None and self.backend != "vllm":
            raise ValueError(
                f"sampler.vllm is set but sampler.backend is {self.backend!r}; "
                "set sampler.backend: vllm or remove sampler.vllm"
            )
        if (self.server is not None) != (self.backend == "server"):
            raise ValueError(
                "sampler.backend: server needs sampler.server (its urls), and sampler.server needs sampler.backend: "
                f"server (got backend {self.backend!r}); set both or neither"
            )
        tp = self.engine.tensor_parallel_size
        if tp > 1 and self.num_gpus != 1:
            raise ValueError(
                f"with sampler.vllm.tensor_parallel_size {tp} each engine gets {tp} GPUs, one per "
                f"placement-group bundle; set sampler.num_gpus: 1 (got {self.num_gpus})"
            )
        return self


class JudgingConfig(Strict):
    actors: int = Field(1, gt=0, description="Judge actors; samples are split between them.")
    num_cpus: float = Field(0, ge=0, description="CPUs reserved per judge actor.")
    num_gpus: float = Field(0, ge=0, description="GPUs per judge actor.")
    resources: Resources = Field(default_factory=dict, description=RESOURCES_HELP)
    chunk_size: int = Field(64, gt=0, description="Samples per judge call.")
    in_flight: int = Field(2, gt=0, description="Chunks outstanding per judge actor at once (back-pressure).")
    max_error_rate: float = Field(
        0.2, ge=0, le=1, description="Stop the run when more than this fraction of judgments fail."
    )
    max_cost_usd: float | None = Field(
        None,
        gt=0,
        description="Most the judges may spend in this run (a round: the round's run), in USD at the judge's prices; "
        "the run stops before a request that could pass it, resumable with a higher cap (None: no cap).",
    )
    max_cost_usd_per_iteration: float | None = Field(
        None,
        gt=0,
        description="Most the judges may spend in one iteration's judge step, in USD; stops as max_cost_usd does "
        "(None: no cap).",
    )
    streaming: bool = Field(
        True,
        description="Judge each chunk as soon as its samples are sampled, while sampling goes on (the same "
        "chunks, so the same judgments, as judging after sampling); false: one phase after the other.",
    )


class LearnerConfig(Strict):
    objective: ObjectiveConfig = Field(default_factory=SFTOptions, description="The loss, chosen by `type`.")
    lr: float = Field(4e-4, gt=0, description="Peak learning rate (AdamW).")
    schedule: Literal["constant", "cosine"] = Field(
        "cosine", description="LR over each iteration's steps (cosine: decay to 0, as CUT's code)."
    )
    warmup_steps: int = Field(0, ge=0, description="Linear warm-up steps at the start of each iteration.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    epochs: int = Field(1, gt=0, description="Passes over each iteration's training data.")
    minibatch_size: int = Field(8, gt=0, description="Sequences per optimizer step.")
    micro_batch_size: int = Field(4, gt=0, description="Sequences per forward pass (gradient accumulation).")
    max_grad_norm: float | None = Field(1.0, gt=0, description="Gradient clipping (None: off).")
    precision: Literal["fp32", "bf16"] = Field(
        "fp32",
        description="bf16: forward passes under bfloat16 autocast, the LoRA weights, their gradients and AdamW state "
        "in float32; fp32: as model.dtype.",
    )
    prefix_sharing: bool = Field(
        False,
        description="Each distinct prompt of a micro-batch goes through the model once and its KV cache serves "
        "every response to it (a step's rows are grouped by prompt first): less compute where k samples share a "
        "prompt, the same loss up to float rounding and LoRA dropout's masks on the prompt's tokens.",
    )
    logprob_check_rows: int = Field(
        4,
        ge=0,
        description="Rows per iteration on which the sampler's log-probs are checked against the "
        "learner's (old_logprob_gap); the others use the sampler's without a second forward pass.",
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Where the learner trains.")
    num_cpus: float = Field(1, ge=0, description="CPUs reserved for the learner actor.")
    num_gpus: float = Field(0, ge=0, description="GPUs for the learner actor.")
    resources: Resources = Field(default_factory=dict, description=RESOURCES_HELP)
    threads: int | None = Field(
        None,
        gt=0,
        description="torch threads (None: every core of the node; with asynchronous.max_staleness sampling and learning overlap: split the cores between them).",
    )
    ranks: int = Field(
        1,
        ge=1,
        description="Learner processes that train one adapter together over torch.distributed (gloo on CPU, "
        "NCCL on CUDA), each on its share of every micro-batch, LoRA gradients summed; 1: one learner actor. "
        "Each rank reserves num_cpus/num_gpus/resources; with threads unset, a rank gets its share of the node's cores.",
    )
    placement: Literal["pack", "spread"] = Field(
        "pack", description="Where the ranks go (ranks > 1): packed onto as few nodes as fit, or spread over the nodes."
    )
    shard_base: bool = Field(
        False,
        description="ranks > 1: shard the frozen base, the LoRA weights and their optimizer state over the ranks "
        "with FSDP2 (fully_shard), for a base too large for one device; false: every rank holds the whole model.",
    )

    @model_validator(mode="after")
    def _shards_need_ranks(self) -> LearnerConfig:
        if self.shard_base and self.ranks < 2:
            raise ValueError("shard_base shards the model over the learner's ranks: set learner.ranks to 2 or more")
        return self

    @model_validator(mode="after")
    def _micro_divides(self) -> LearnerConfig:
        if self.minibatch_size % self.micro_batch_size:
            raise ValueError(
                f"minibatch_size ({self.minibatch_size}) must be a multiple of micro_batch_size "
                f"({self.micro_batch_size}); set learner.micro_batch_size to a divisor of it"
            )
        return self


class AsyncConfig(Strict):
    max_staleness: int = Field(
        0,
        ge=0,
        description="0: each iteration samples from the adapter the previous one learned. N >= 1: the "
        "samplers run up to N iterations ahead of the learner (iteration i samples from the adapter of iteration "
        "i-1-N while the learner trains i-1); the importance ratio of ppo/grpo corrects for the lag, sampling waits "
        "rather than lag more (back-pressure), and a run is reproducible and resumable as a synchronous one.",
    )


class RayConfig(Strict):
    address: str | None = Field(None, description="Cluster to attach to (None: $RAY_ADDRESS, else a local instance).")
    dashboard: bool = Field(False, description="Start the Ray dashboard (local instance only, on 127.0.0.1).")
    num_cpus: int | None = Field(None, gt=0, description="CPUs of a local instance (None: all).")
    actor_restart_timeout_s: float = Field(
        300,
        gt=0,
        description="How long a restarted sampler (it loads the model again) may take to answer before "
        "the run counts it as gone (its node may have left the cluster).",
    )
    placement_timeout_s: float = Field(
        300,
        gt=0,
        description="How long the run waits for the cluster to hold every actor's CPUs, GPUs and resources "
        "before it stops with a message naming what was asked and what is there (exit 2).",
    )


class WandbOptions(Strict):
    project: str = Field("alignloop", description="W&B project.")
    entity: str | None = Field(None, description="W&B entity (team or user; None: your default).")
    mode: Literal["offline", "online"] = Field(
        "offline", description="offline writes local files (`wandb sync` uploads them)."
    )


class MlflowOptions(Strict):
    tracking_uri: str | None = Field(
        None, description="MLflow tracking URI (None: a local file store in the tracking dir)."
    )
    experiment: str = Field("alignloop", description="MLflow experiment name.")


class TrackingConfig(Strict):
    backends: list[Literal["tensorboard", "wandb", "mlflow"]] = Field(
        ["tensorboard"], description="Where per-iteration metrics go ([]: nowhere but metrics.jsonl)."
    )
    dir: str | None = Field(
        None, description="Tracking files (None: <run_dir>/tracking; a series': <series_dir>/tracking)."
    )
    samples: int = Field(8, ge=0, description="Sample responses with their judgments logged per iteration as a table.")
    wandb: WandbOptions = Field(default_factory=WandbOptions, description="Weights & Biases options.")
    mlflow: MlflowOptions = Field(default_factory=MlflowOptions, description="MLflow options.")

    @model_validator(mode="after")
    def _no_repeats(self) -> TrackingConfig:
        if len(set(self.backends)) != len(self.backends):
            raise ValueError(f"tracking.backends lists a backend twice ({self.backends}); list each once")
        return self


class EvalConfig(Strict):
    path: str = Field(description="Held-out prompts: a file, a directory or a glob (never trained on).")
    samples_per_prompt: int = Field(2, gt=0, description="Responses per eval prompt.")
    metric: Literal["pass_rate", "mean_score"] = Field("pass_rate", description="What the gate compares.")
    margin: float = Field(
        0.0, ge=0, description="Promote unless the candidate is worse than the promoted adapter by more than this."
    )
    judge: JudgeConfig | None = Field(None, description="The eval's own judge (None: the run's judge).")


class RoundConfig(Strict):
    series_dir: str | None = Field(None, description="The series directory (None: runs/<name>).")
    max_prompts: int | None = Field(
        None, gt=0, description="New prompts a round trains on at most (None: all new ones)."
    )
    fresh_optimizer: bool = Field(
        False, description="Start each round's optimizer afresh instead of from the promoted adapter's."
    )
    eval: EvalConfig | None = Field(None, description="The promotion gate (None: every finished round is promoted).")
    serve: ServeOptions | None = Field(
        None, description="Endpoints where each promoted adapter is loaded under a stable name (None: nowhere)."
    )


class RunConfig(Strict):
    name: str = Field(description="Run name; the run directory defaults to runs/<name>.")
    run_dir: str | None = Field(None, description="Where artifacts go (None: runs/<name>).")
    shared_files: bool = Field(
        False,
        description=(
            "Create the run's files with the umask's permissions (false: owner only, files 0600 and directories "
            "0700, as they hold prompts, responses, judgments and the config)."
        ),
    )
    seed: int = Field(0, description="Seeds data order, sampling and training.")
    iterations: int = Field(5, gt=0, description="Sample-judge-learn cycles.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="The policy and its LoRA adapter.")
    data: DataConfig = Field(description="The prompts.")
    sampler: SamplerConfig = Field(default_factory=SamplerConfig, description="How responses are sampled.")
    judge: JudgeConfig = Field(description="The judge backend, chosen by `type`.")
    judging: JudgingConfig = Field(default_factory=JudgingConfig, description="The judge actors and error budget.")
    learner: LearnerConfig = Field(default_factory=LearnerConfig, description="Objective and optimisation.")
    asynchronous: AsyncConfig = Field(
        default_factory=AsyncConfig, description="Sampling ahead of the learner (off by default)."
    )
    ray: RayConfig = Field(default_factory=RayConfig, description="Where the actors run.")
    tracking: TrackingConfig = Field(
        default_factory=TrackingConfig, description="Experiment tracking: TensorBoard, W&B, MLflow."
    )
    round: RoundConfig = Field(
        default_factory=RoundConfig, description="Nightly rounds (`alignloop round`): series, new prompts, gate."
    )

    @model_validator(mode="after")
    def _name_is_a_directory_name(self) -> RunConfig:
        if not re.fullmatch(r"[A-Za-z0-9._-]+", self.name):
            raise ValueError(f"name {quote(self.name)} must use only letters, digits, '.', '_' and '-'")
        return self

    @model_validator(mode="after")
    def _lora_fits_the_engine(self) -> RunConfig:
        rank = self.sampler.engine.max_lora_rank
        if self.sampler.backend == "vllm" and self.model.lora.r > rank:
            raise ValueError(
                f"model.lora.r ({self.model.lora.r}) is above sampler.vllm.max_lora_rank ({rank}); "
                f"set sampler.vllm.max_lora_rank to at least {self.model.lora.r}"
            )
        return self

    @model_validator(mode="after")
    def _objective_has_what_it_compares(self) -> RunConfig:
        need, k = self.learner.objective.min_samples_per_prompt, self.sampler.samples_per_prompt
        if k < need:
            raise ValueError(
                f"learner.objective {self.learner.objective.type!r} compares the samples of each prompt and "
                f"learns nothing from sampler.samples_per_prompt {k}; set it to at least {need}"
            )
        return self

    @model_validator(mode="after")
    def _a_cost_cap_has_prices(self) -> RunConfig:
        if self.judging.max_cost_usd is None and self.judging.max_cost_usd_per_iteration is None:
            return self
        if self.judge.type != "openai":
            raise ValueError(
                f"judging.max_cost_usd caps what the openai judge spends (it prices each request before sending "
                f"it); judge.type {self.judge.type!r} would not be held to it: remove the cap"
            )
        if not (self.judge.price_input_per_mtok or self.judge.price_output_per_mtok):
            raise ValueError(
                "judging.max_cost_usd needs the judge's prices to count what it spends: set "
                "judge.price_input_per_mtok and judge.price_output_per_mtok (USD per million tokens)"
            )
        return self

    @model_validator(mode="after")
    def _groups_fit_in_chunks(self) -> RunConfig:
        k, size = self.sampler.samples_per_prompt, self.judging.chunk_size
        if getattr(self.judge, "mode", "sample") == "group" and size % k:
            raise ValueError(
                f"judge.mode group judges each prompt's {k} responses in one request, so a judge chunk must hold "
                f"whole groups; set judging.chunk_size to a multiple of sampler.samples_per_prompt (e.g. {k * max(1, size // k)})"
            )
        return self

    @model_validator(mode="after")
    def _people_judge_in_order(self) -> RunConfig:
        if self.judge.type == "human" and self.asynchronous.max_staleness:
            raise ValueError(
                "judge.type human stops the run until people have judged an iteration, which sampling ahead "
                "cannot wait for; set asynchronous.max_staleness: 0"
            )
        return self

    @property
    def resolved_run_dir(self) -> Path:
        return Path(self.run_dir or Path("runs") / self.name)

    @property
    def series_dir(self) -> Path:
        return Path(self.round.series_dir or Path("runs") / self.name)
