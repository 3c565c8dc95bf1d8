"""Learner ranks: N processes that train one adapter together over torch.distributed (gloo on
CPU, NCCL on CUDA).

Every rank holds the whole model and the same adapter, selects and plans the same rows (the
plan depends on the seed alone), and trains on its share of each micro-batch; the LoRA
gradients, which are small, are summed across the ranks before every rank takes the same
optimizer step, so the ranks never drift apart and rank 0 alone exports and saves (with
learner.shard_base the model is sharded instead, policies/sharding.py, and every rank takes
part in gathering what rank 0 exports and saves). Each part's loss is weighted by its share
of what the objective averages over in the whole micro-batch (rows or tokens, counted across
the ranks by an all-reduce), so N ranks compute the single learner's loss and gradient up to
the order of floating-point sums.

This module knows nothing of Ray: loop/roles/ray_roles.py (LearnerGroup) places the ranks as actors and
passes rank 0's address to the others; a test or script can start them with
torch.multiprocessing instead.
"""

from __future__ import annotations

import datetime
import io
import os
import socket
import tempfile
import time

import torch
import torch.distributed as dist
from safetensors.torch import load as load_safetensors

from alignloop.policies.adapter import AdapterPayload
from alignloop.policies.learner import Learner

# How long a rank waits for the others at the rendezvous or in one collective before it gives
# up; a rank that died is noticed sooner, when its peers find its connection closed.
COLLECTIVE_TIMEOUT_S = 600


def free_port() -> int:
    """A TCP port free on this machine now, for rank 0 to listen on."""
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def balance(costs: list[int], world: int) -> list[list[int]]:
    """Indices of `costs` split into `world` parts of nearly equal total cost: the costliest
    first, each to the part with the least so far (ties: the lower part); each part's indices
    in their original order, so a split is the same on every rank."""
    parts: list[list[int]] = [[] for _ in range(world)]
    load = [0] * world
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        r = min(range(world), key=lambda r: (load[r], r))
        parts[r].append(i)
        load[r] += costs[i]
    return [sorted(p) for p in parts]


class RankGroup:
    """This process's place in the learner's process group and the collectives the learner uses.
    `allreduce_s` adds up the seconds spent summing gradients (for the benchmark)."""

    def __init__(self, rank: int, world: int):
        self.rank, self.world = rank, world
        self.allreduce_s = 0.0
        # The base is sharded with FSDP2 (policies/sharding.py), which sums the gradients itself.
        self.sharded = False

    @classmethod
    def join(cls, rank: int, world: int, address: str, backend: str) -> RankGroup:
        """Join the group whose rank 0 listens on `address` (host:port); blocks until all
        `world` ranks have joined."""
        dist.init_process_group(
            backend,
            init_method=f"tcp://{address}",
            rank=rank,
            world_size=world,
            timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S),
        )
        return cls(rank, world)

    def my_part(self, costs: list[int]) -> list[int]:
        return balance(costs, self.world)[self.rank]

    def sum(self, values: list[float], device) -> list[float]:
        """Each value summed over the ranks (float64, so counts stay exact)."""
        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return t.tolist()

    def sum_grads(self, params: list[torch.nn.Parameter]) -> None:
        """Sum the gradients of `params` over the ranks, in one flat all-reduce (a rank that had
        no rows in this step contributes zeros). Sharded, FSDP has reduce-scattered them already."""
        if self.sharded:
            return
        t0 = time.perf_counter()
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        offset = 0
        for p, g in zip(params, grads):
            p.grad = flat[offset : offset + g.numel()].view_as(g).clone()
            offset += g.numel()
        self.allreduce_s += time.perf_counter() - t0

    def sum_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        """Each metric summed over the ranks that report it (parts may report different keys)."""
        gathered: list[dict[str, float] | None] = [None] * self.world
        dist.all_gather_object(gathered, metrics)
        out: dict[str, float] = {}
        for m in gathered:
            for key, value in (m or {}).items():
                out[key] = out.get(key, 0.0) + value
        return out

    def same_params(self, params: list[torch.nn.Parameter]) -> None:
        """Give every rank rank 0's values (a safeguard at the start: equal seeds already
        initialise the adapter alike)."""
        for p in params:
            dist.broadcast(p.data, src=0)

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


def backend_for(device: str) -> str:
    return "nccl" if device.startswith("cuda") else "gloo"


class RankLearner(Learner):
    """A Learner that is one rank of a group: constructed like a Learner (its model loaded),
    then `join()`ed once every rank exists. Only rank 0's export and state are used."""

    def __init__(self, model_cfg, learner_cfg, temperature: float = 1.0, seed: int = 0, rank: int = 0, world: int = 1):
        if learner_cfg.threads is None:  # the ranks packed on a node share its cores
            learner_cfg = learner_cfg.model_copy(update={"threads": max(1, (os.cpu_count() or 1) // world)})
        if learner_cfg.device == "cuda" or (learner_cfg.device == "auto" and torch.cuda.is_available()):
            # one GPU per rank: Ray gives each actor its own (CUDA_VISIBLE_DEVICES), a spawned
            # process takes the one numbered by its rank
            if torch.cuda.device_count() > 1:
                torch.cuda.set_device(rank % torch.cuda.device_count())
        super().__init__(model_cfg, learner_cfg, temperature, seed)
        self.rank, self.world = rank, world

    def rendezvous(self, host: str) -> str:
        """The address rank 0 will listen on (`host` is its node's address)."""
        return f"{host}:{free_port()}"

    def join(self, address: str) -> int:
        self.group = RankGroup.join(self.rank, self.world, address, backend_for(self.device))
        self.group.same_params(self.params)
        if self.cfg.shard_base:
            from alignloop.policies import sharding

            sharding.shard(self.model)
            # FSDP replaced the parameters with sharded ones: the optimizer takes those
            self.params = [p for p in self.model.parameters() if p.requires_grad]
            self.optimizer = torch.optim.AdamW(self.params, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
            self.group.sharded = True
        return self.rank

    @property
    def sharded(self) -> bool:
        return self.group is not None and self.group.sharded

    # sharded, what leaves the group is gathered: every rank takes part, rank 0 answers ------
    def export(self) -> AdapterPayload:
        if not self.sharded:
            return super().export()
        from alignloop.policies import sharding

        weights = sharding.full_trainable_state(self.model)
        with tempfile.TemporaryDirectory() as tmp:
            if self.rank == 0:
                self.model.save_pretrained(tmp, state_dict=weights)
                return AdapterPayload.from_dir(tmp, self.version)
        return None  # type: ignore[return-value]  # only rank 0's is used

    def state_bytes(self) -> bytes:
        if not self.sharded:
            return super().state_bytes()
        from alignloop.policies import sharding

        optimizer = sharding.full_optimizer_state(self.model, self.optimizer)
        buf = io.BytesIO()
        torch.save({"optimizer": optimizer, "version": self.version}, buf)
        return buf.getvalue() if self.rank == 0 else b""

    def restore(self, payload: AdapterPayload, state: bytes | None, version: int | None = None) -> None:
        if not self.sharded:
            return super().restore(payload, state, version)
        from alignloop.policies import sharding

        payload.verify()
        names = {n.replace(".default.", "."): n for n in sharding.trainable_names(self.model)}  # PEFT's keys
        weights = load_safetensors(payload.weights)
        sharding.load_trainable_state(self.model, {names[k]: v.to(self.device) for k, v in weights.items()})
        saved = torch.load(io.BytesIO(state), map_location="cpu", weights_only=True) if state else None
        if saved is not None:
            sharding.load_optimizer_state(self.model, self.optimizer, saved["optimizer"])
        self.version = version if version is not None else saved["version"] if saved else payload.version

    def allreduce_seconds(self) -> float:
        return self.group.allreduce_s if self.group else 0.0

    def leave(self) -> None:
        if self.group is not None:
            self.group.close()
