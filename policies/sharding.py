"""FSDP2 over the learner's ranks (learner.shard_base): each decoder layer and the whole model
are `fully_shard`ed, so every rank keeps 1/N of the frozen base (and of the LoRA weights and
their optimizer state) and gathers a layer's weights only while it computes it.

FSDP all-gathers each layer's weights in every forward, so the ranks must run the same
forwards in the same order: the learner group gives a rank with no rows in a micro-batch a
stand-in row weighted 0. Gradients are reduce-scattered in backward, summed (the group weighs
each rank's part itself). What leaves the group, the adapter and the optimizer state, is
gathered whole on rank 0 in the single learner's formats, so a checkpoint does not depend on
how the ranks held it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor

FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)  # whole tensors, on rank 0's CPU


def shard(model: Any) -> None:  # a PeftModel
    """fully_shard every decoder layer (the classes transformers never splits across devices),
    then the root, which takes the rest (embeddings, final norm, head); gradients summed."""
    layers = set(getattr(model.get_base_model(), "_no_split_modules", None) or ())
    for module in model.modules():
        if type(module).__name__ in layers:
            fully_shard(module)
    fully_shard(model)
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)  # gloo has no PREMUL_SUM


def trainable_names(model: torch.nn.Module) -> list[str]:
    """The trainable parameters' names, in the order the optimizer holds them."""
    return [n for n, p in model.named_parameters() if p.requires_grad]


def full_trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The trainable weights, whole, on rank 0 (empty on the others); every rank must call it."""
    state: dict[str, Any] = get_model_state_dict(model, options=FULL)
    keep = set(trainable_names(model))
    return {k: v for k, v in state.items() if k in keep}


def full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer state, whole, on rank 0, numbered as Optimizer.state_dict() numbers it;
    every rank must call it."""
    by_name: Any = get_optimizer_state_dict(model, optimizer, options=FULL)
    index = {n: i for i, n in enumerate(trainable_names(model))}
    return {
        "state": {index[n]: s for n, s in by_name.get("state", {}).items()},
        "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in by_name.get("param_groups", [])],
    }


def sharded_like(param: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
    """`full` cut as `param` is (a DTensor sharded on dim 0, as fully_shard cuts: this rank keeps
    its torch.chunk), without a collective: every rank holds `full`. (distribute_tensor and the
    DCP set_*_state_dict calls both failed over gloo here with a collective size mismatch.)"""
    full = full.to(param.device, param.dtype)
    if not isinstance(param, DTensor):
        return full
    assert [type(p).__name__ for p in param.placements] == ["Shard"] and param.placements[0].dim == 0  # type: ignore[attr-defined]
    mesh = param.device_mesh
    rank, world = mesh.get_local_rank(), mesh.size()
    chunks = torch.chunk(full, world, dim=0)
    local = chunks[rank] if rank < len(chunks) else full[:0]
    return DTensor.from_local(
        local.contiguous(), mesh, param.placements, run_check=False, shape=param.shape, stride=param.stride()
    )


def load_trainable_state(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Shard whole trainable weights (every rank holds them all) into the model."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, full in weights.items():
            params[name].copy_(sharded_like(params[name], full))


def load_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, saved: dict) -> None:
    """Shard a whole optimizer state numbered as Optimizer.state_dict() numbers it (every rank
    holds it all): each moment is cut as its parameter is."""
    params = [p for p in model.parameters() if p.requires_grad]
    state = {
        i: {k: sharded_like(params[i], v) if v.dim() else v for k, v in s.items()} for i, s in saved["state"].items()
    }
    optimizer.load_state_dict({"state": state, "param_groups": saved["param_groups"]})
