"""Where a process sits in a job, resolved once; the process group; small collectives (MAE Sec. 4 trains on
64-128 devices).

The launch contract (``ARCHITECTURE.md``, scale-out): :func:`placement` reads the environment the first
time anything asks and never again:

- torchrun (single or multi node): ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` / ``LOCAL_WORLD_SIZE``;
- srun (plain ``srun mae pretrain ...``, or a submitit job): ``SLURM_PROCID`` / ``SLURM_NTASKS`` (the step's
  ``SLURM_STEP_NUM_TASKS`` where set) / ``SLURM_LOCALID``, exported as torchrun's names so every later
  reader (torch, timm, mmengine) agrees; ``MASTER_ADDR`` defaults to the first host of the job's node list
  and ``MASTER_PORT`` to a port derived from the job id;
- else one process.

A GPU process uses ``cuda:(local_rank % device_count)``: one GPU per task (SLURM's ``--gpus-per-task``)
and all GPUs visible to every task both work.
"""
from __future__ import annotations

import os
import re
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """A process's place in its job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    #: who started the processes: "single", "torchrun", "slurm" or "env" (RANK / WORLD_SIZE set by hand)
    launcher: str = "single"

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_PLACEMENT: DistInfo | None = None


def first_host(nodelist: str) -> str:
    """The first host name of a SLURM node list: ``'gpu[03-05,9],cpu1'`` -> ``'gpu03'``."""
    m = re.match(r"^([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if not m:
        raise ValueError(f"cannot read the SLURM node list {nodelist!r}")
    prefix, ranges = m.group(1), m.group(2)
    if not ranges:
        return prefix
    return prefix + ranges.split(",")[0].split("-")[0]


def tasks_on_nodes(spec: str) -> list[int]:
    """SLURM's tasks per node, one entry per node: ``'4(x2),3'`` -> ``[4, 4, 3]`` ([] for an empty spec)."""
    out: list[int] = []
    for part in filter(None, spec.split(",")):
        m = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
        if not m:
            raise ValueError(f"cannot read SLURM's tasks per node {spec!r}")
        out += [int(m.group(1))] * int(m.group(2) or 1)
    return out


def resolve_placement(env: MutableMapping[str, str] | None = None) -> DistInfo:
    """Read the launcher's variables from ``env`` (default ``os.environ``) and export torchrun's names.

    A SLURM task count above one only counts inside a job step (``SLURM_STEP_NUM_TASKS``, which srun sets),
    or with ``SLURM_NTASKS`` and a ``MASTER_ADDR`` given by hand: a batch script that runs one process
    in an allocation of eight tasks is one process, not rank 0 of eight waiting for the other seven.
    """
    env = os.environ if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:
        rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
        local = int(env.get("LOCAL_RANK", 0))
        launcher = ("single" if world <= 1 else "torchrun" if "TORCHELASTIC_RUN_ID" in env
                    else "slurm" if "SLURM_PROCID" in env else "env")  # (submitit exports RANK from SLURM's)
    elif "SLURM_PROCID" in env and ("SLURM_STEP_NUM_TASKS" in env or "MASTER_ADDR" in env):
        rank = int(env["SLURM_PROCID"])
        world = int(env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS", "1"))
        local = int(env.get("SLURM_LOCALID", 0))
        launcher = "slurm" if world > 1 else "single"
        if world > 1:
            env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"] = str(rank), str(world), str(local)
            per_node = tasks_on_nodes(env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE", ""))
            node = int(env.get("SLURM_NODEID", 0) or 0)
            if node < len(per_node):
                env.setdefault("LOCAL_WORLD_SIZE", str(per_node[node]))
            nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
            if "MASTER_ADDR" not in env:
                env["MASTER_ADDR"] = first_host(nodes) if nodes else "127.0.0.1"
            if "MASTER_PORT" not in env:  # one port per job step: two jobs, or two steps of a job, do not collide
                job, step = int(env.get("SLURM_JOB_ID", "0") or 0), int(env.get("SLURM_STEP_ID", "0") or 0)
                env["MASTER_PORT"] = str(20000 + (job + 7919 * step) % 20000)
    else:
        rank, world, local, launcher = 0, 1, 0, "single"
    if not 0 <= rank < max(world, 1):
        raise RuntimeError(f"rank {rank} is outside a job of {world} process(es): check the launcher's variables")
    return DistInfo(rank, world, local, None, launcher)


def placement() -> DistInfo:
    """This process's place (resolved on the first call, from the environment; see the module docstring)."""
    global _PLACEMENT
    if _PLACEMENT is None:
        _PLACEMENT = resolve_placement()
    return _PLACEMENT


def is_main_process() -> bool:
    """Rank 0 (or the only process): the one that writes and prints."""
    return placement().is_main


def local_device(device_type: str) -> torch.device:
    """The device this process uses: ``cuda:(local_rank % device_count)`` on GPUs, else ``device_type``."""
    if device_type == "cuda":
        count = max(torch.cuda.device_count(), 1)
        return torch.device("cuda", placement().local_rank % count)
    return torch.device(device_type)


def init_distributed(device_type: str) -> DistInfo:
    """Join the job's process group (gloo on CPU, nccl on GPU); one process: nothing to join."""
    where = placement()
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), where.local_rank, dist.get_backend(), where.launcher)
    if not where.enabled:
        return where
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(local_device("cuda"))
    dist.init_process_group(backend=backend, init_method="env://", world_size=where.world_size, rank=where.rank)
    dist.barrier()
    return DistInfo(where.rank, where.world_size, where.local_rank, backend, where.launcher)


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def all_reduce_mean(x: float | torch.Tensor, device: torch.device | str = "cpu") -> float:
    """Mean of a scalar over processes (the value itself when not distributed)."""
    if not is_initialized():
        return float(x)
    t = torch.as_tensor(float(x), dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / dist.get_world_size()


def all_reduce_max(x: int, device: torch.device | str = "cpu") -> int:
    """The largest of an integer over processes (the value itself when not distributed): flags ranks agree on."""
    if not is_initialized():
        return int(x)
    t = torch.tensor(int(x), dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (``[obj]`` when not distributed)."""
    if not is_initialized():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def cleanup() -> None:
    """Leave the process group before exit. Objects that hold it (a DDP model's reducer, kept alive by a reference
    cycle such as a step closure naming its Trainer) are collected first: a group destroyed later, during
    interpreter shutdown, can abort a finished process ("terminate called without an active exception")."""
    if is_initialized():
        import gc
        gc.collect()
        dist.destroy_process_group()
        gc.collect()


def shard_indices(n: int) -> range:
    """The items of an ``n``-item set this rank handles when work is dealt round-robin (item i to rank
    ``i % world_size``): every item once over all ranks; ``range(n)`` when not distributed."""
    if not is_initialized() or n < dist.get_world_size():  # fewer items than ranks: every rank takes them all
        return range(n)
    return range(dist.get_rank(), n, dist.get_world_size())


def local_shard(dataset: Any) -> Any:
    """This rank's round-robin share of ``dataset`` (:func:`shard_indices`; the dataset itself when unsharded)."""
    from torch.utils.data import Subset
    shard = shard_indices(len(dataset))
    return Subset(dataset, shard) if len(shard) < len(dataset) else dataset


def gather_shards(local: torch.Tensor, n: int) -> torch.Tensor:
    """The ``n`` rows of a set from each rank's round-robin shard (:func:`shard_indices`), in the set's order,
    on every rank (on ``local``'s device; nccl needs it on the rank's GPU). ``local`` when not distributed."""
    if not is_initialized() or n < dist.get_world_size():  # (each rank computed all: shard_indices)
        return local
    world = dist.get_world_size()
    per = -(-n // world)
    full = torch.zeros((per, *local.shape[1:]), dtype=local.dtype, device=local.device)
    full[:local.shape[0]] = local
    parts = [torch.empty_like(full) for _ in range(world)]
    dist.all_gather(parts, full)
    return torch.stack(parts, dim=1).reshape(per * world, *local.shape[1:])[:n]
