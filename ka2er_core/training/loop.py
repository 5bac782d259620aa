"""One training loop for every trainer: single process or ``torchrun`` (DDP), resumable.

A trainer supplies a *step module* (an ``nn.Module`` whose ``forward(**batch)`` returns
``(loss, metrics)``) and a batch function. Under ``torchrun`` the step module is wrapped in
DistributedDataParallel (gloo on CPU, NCCL on GPU); each rank draws its own batches.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import nn

from ..io.atomic import atomic_write

Batch = dict
BatchFunction = Callable[[int, np.random.Generator], Batch]


@dataclass
class LoopConfig:
    steps: int
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup: int = 50
    grad_clip: float = 1.0
    checkpoint_every: int = 100
    snapshot_every: int = 0  # also keep the weights of every this many steps (0: never)
    log_every: int = 10
    seed: int = 0


def distributed_context() -> tuple[int, int, torch.device]:
    """(rank, world size, device); initialises the process group when run under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return (dist.get_rank() if world > 1 else 0), world, device


def learning_rate(config: LoopConfig, step: int) -> float:
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    return config.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def save_weights(path: Path, model: nn.Module) -> None:
    """The model's weights alone (a checkpoint's, or a snapshot for a validation curve)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp))


def save_checkpoint(folder: Path, model: nn.Module, optimizer, step: int, history: list) -> None:
    save_weights(folder / "model.safetensors", model)
    with atomic_write(folder / "optimizer.pt") as tmp:
        torch.save(optimizer.state_dict(), tmp)
    with atomic_write(folder / "state.json") as tmp:  # written last: marks the checkpoint complete
        tmp.write_text(json.dumps({"step": step, "history": history}))


def load_checkpoint(folder: Path, model: nn.Module, optimizer) -> tuple[int, list]:
    state = json.loads((folder / "state.json").read_text())
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
    return int(state["step"]), list(state["history"])


def train_loop(step_module: nn.Module, model: nn.Module, batches: BatchFunction, config: LoopConfig,
               out_dir: Path, progress: Optional[Callable[[str], None]] = None) -> dict:
    """Train ``model`` (the part of ``step_module`` that is saved) for ``config.steps`` steps.

    Checkpoints go to ``out_dir/checkpoint`` every ``checkpoint_every`` steps; an existing checkpoint
    is resumed. Returns a summary (steps, wall time, mean of each metric over the last 10%).
    """
    rank, world, device = distributed_context()
    step_module.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    checkpoint = Path(out_dir) / "checkpoint"
    start, history = 0, []
    if (checkpoint / "state.json").exists():
        start, history = load_checkpoint(checkpoint, model, optimizer)
        if progress and rank == 0:
            progress(f"resumed from {checkpoint} at step {start}")
    runner = step_module
    if world > 1:
        runner = nn.parallel.DistributedDataParallel(step_module, find_unused_parameters=True)
    t0 = time.perf_counter()
    recent: list[dict] = []
    for step in range(start, config.steps):
        rng = np.random.default_rng([config.seed, rank, step])
        batch = batches(step, rng)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(config, step)
        loss, metrics = runner(**batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        recent.append({"loss": loss.item(), **{k: float(v) for k, v in metrics.items()}})
        done = step + 1
        if rank == 0 and (done % config.log_every == 0 or done == config.steps):
            means = {k: float(np.mean([r[k] for r in recent])) for k in recent[0]}
            history.append({"step": done, **means})
            recent = []
            if progress:
                rate = (done - start) / (time.perf_counter() - t0)
                eta = (config.steps - done) / max(rate, 1e-9)
                shown = " ".join(f"{k} {v:.4f}" for k, v in means.items())
                progress(f"step {done}/{config.steps} {shown} ({rate:.2f} steps/s, ETA {eta / 60:.1f} min)")
        if rank == 0 and (done % config.checkpoint_every == 0 or done == config.steps):
            save_checkpoint(checkpoint, model, optimizer, done, history)
        if rank == 0 and config.snapshot_every and done % config.snapshot_every == 0:
            save_weights(checkpoint / "snapshots" / f"step-{done:06d}.safetensors", model)
    if world > 1:
        dist.barrier()
    tail = history[-max(1, len(history) // 10):]
    summary = {"steps": config.steps, "world_size": world, "seconds": time.perf_counter() - t0,
               "config": asdict(config)}
    if tail:
        summary["final"] = {k: float(np.mean([h[k] for h in tail])) for k in tail[0] if k != "step"}
    return summary
