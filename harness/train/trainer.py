"""The one training loop for every learned drafter: the method supplies a network and an objective.

``python -m harness train --method eagle2 --data DIR --out DIR [--preset cpu|gpu]``. AdamW with linear
warm-up and linear decay, gradient clipping by value (EAGLE), bf16 autocast on CUDA and fp32 on CPU,
fixed seeds, a held-out split evaluated every epoch (top-1 agreement with the target per depth), a
checkpoint per epoch, resume from the last finished epoch, CSV loss logs (TensorBoard too if it is
installed), and an optional wall-clock budget after which training stops at the next batch.
Under ``torchrun --nproc_per_node=N`` the ranks train one network data-parallel (harness/train/distributed.py):
each global batch is split by rank, rank 0 writes checkpoints and logs, and the loss curve is one process's.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from harness import checkpoint as ckpt
from harness import env
from harness.learned import LearnedDrafter, Objective
from harness.target import Target
from harness.train import distributed
from harness.train.data import FeatureData


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 20
    batch_size: int = 8
    lr: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.0
    warmup_steps: int = 100
    clip_value: float = 0.5
    max_len: int = 1024
    holdout: float = 0.05
    eval_depths: int = 5
    seed: int = 0
    time_budget_s: float | None = None   # stop at the next batch after this many seconds
    max_steps: int | None = None         # stop after this many optimizer steps; the schedule decays to zero there
                                         # (a compute budget that, unlike seconds, does not depend on machine load)
    max_samples: int | None = None       # train on the data folder's first N samples only (a fixed subset)


PRESETS = {
    # Sized for 2 CPU cores: about 1000 datagen samples x 8 epochs, stopped at 28 minutes in any case.
    "cpu": TrainConfig(epochs=8, batch_size=8, lr=1e-3, warmup_steps=50, max_len=768, time_budget_s=28 * 60),
    "gpu": TrainConfig(epochs=20, batch_size=16, lr=3e-4, warmup_steps=200, max_len=2048),
}


def train(method_cls: type[LearnedDrafter], target: Target, data: FeatureData, out: Path, config: TrainConfig,
          loss_options: dict | None = None, init: Path | None = None) -> Path:
    """Train into ``out``; ``init`` starts from a checkpoint's weights (HASS's second stage, or a sibling
    method's draft: the method's ``accepts.warm_start`` says which checkpoints it can start from)."""
    ckpt.check_fingerprint(data.fingerprint, target.fingerprint(), data.directory)
    group = distributed.start()
    main = group is None or group.main
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    net, objective = method_cls.training_setup(target, data, **(loss_options or {}))
    if init is not None:
        method_cls.warm_start(net, target, init)
    net = net.to(target.device).train()
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)
    train_ids, held_out = data.split(config.holdout, config.seed)
    steps_per_epoch = -(-len(train_ids) // config.batch_size)
    total_steps = max(1, min(steps_per_epoch * config.epochs, config.max_steps or steps_per_epoch * config.epochs))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(
        (step + 1) / config.warmup_steps, max(0.0, (total_steps - step) / max(1, total_steps - config.warmup_steps))))
    if main:
        out.mkdir(parents=True, exist_ok=True)
    state_path = out / "trainer_state.pt"
    state = {"epoch": 0, "step": 0, "seconds": 0.0, "evals": []}
    saved = torch.load(state_path, weights_only=False) if main and state_path.is_file() else None
    if group is not None:
        saved = distributed.from_main(saved)
    if saved is not None:
        net.load_state_dict(saved["net"])
        optimizer.load_state_dict(saved["optimizer"])
        schedule.load_state_dict(saved["schedule"])
        state = saved["state"]
        if main:
            print(f"resuming after epoch {state['epoch']} (step {state['step']})")
    step_loss = distributed.wrap(net, objective, group) if group is not None else None
    logger = _Logger(out, enabled=main)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if target.device.type == "cuda" else contextlib.nullcontext()
    started = time.perf_counter() - state["seconds"]
    stopped_early = False
    for epoch in range(state["epoch"], config.epochs):
        rng = random.Random(f"{config.seed}:{epoch}")
        for indices in data.groups(train_ids, config.batch_size, rng):
            with autocast:
                if group is None:
                    loss, logs = objective.loss(net, data.collate(indices, target.device))
                else:
                    loss, logs = _rank_loss(step_loss, data, indices, group, target.device)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_value_(params, config.clip_value)
            optimizer.step()
            schedule.step()
            state["step"] += 1
            logger.step({"step": state["step"], "epoch": epoch + 1, "lr": schedule.get_last_lr()[0],
                         "seconds": round(time.perf_counter() - started, 1), **logs})
            over_time = bool(config.time_budget_s and time.perf_counter() - started > config.time_budget_s)
            if group is not None:
                over_time = distributed.any_rank(over_time)
            if over_time or state["step"] >= total_steps:
                stopped_early = state["step"] < steps_per_epoch * config.epochs
                break
        state.update(epoch=epoch + 1, seconds=time.perf_counter() - started)
        if main:
            evaluation = _evaluate(objective, net, data, held_out, config, target.device)
            state["evals"].append({"epoch": epoch + 1, "step": state["step"], **evaluation})
            logger.eval(state["evals"][-1])
            print(f"epoch {epoch + 1}: " + ", ".join(f"{k} {v:.3f}" for k, v in evaluation.items()))
            _save(method_cls, net, target, out / f"epoch_{epoch + 1}", data, config, loss_options,
                  {**state, "init": init})
            torch.save({"net": net.state_dict(), "optimizer": optimizer.state_dict(),
                        "schedule": schedule.state_dict(), "state": state}, state_path)
        if group is not None:
            distributed.barrier()   # the others wait while rank 0 evaluates and saves
        if stopped_early:
            if main:
                print(f"budget reached after {state['step']} steps, {state['seconds']:.0f} s")
            break
    if main:
        _save(method_cls, net, target, out, data, config, loss_options,
              {**state, "stopped_early": stopped_early, "init": init})
    logger.close()
    return out


def _rank_loss(step_loss, data: FeatureData, indices: list[int], group: distributed.Group,
               device) -> tuple[torch.Tensor, dict]:
    """This rank's part of a global batch through DistributedDataParallel, weighted so that the gradients
    DDP averages are the global batch's; the logs are the global batch's means."""
    mine, real = distributed.my_part(indices, group)
    batch = data.collate(mine, device)
    count = distributed.positions(batch) if real else torch.zeros((), dtype=torch.long)
    share, _ = distributed.weight(count, group)
    loss, logs = step_loss(batch)
    return loss * share, distributed.global_logs(logs, share, group)


def _evaluate(objective: Objective, net: torch.nn.Module, data: FeatureData, held_out: list[int], config: TrainConfig, device) -> dict:
    net.eval()
    totals: dict[str, list[int]] = {}
    for batch in data.batches(held_out, config.batch_size, None, device):
        for key, (hits, count) in objective.evaluate(net, batch, config.eval_depths).items():
            acc = totals.setdefault(key, [0, 0])
            acc[0] += hits
            acc[1] += count
    net.train()
    return {key: hits / max(count, 1) for key, (hits, count) in totals.items()}


def _save(method_cls: type[LearnedDrafter], net: torch.nn.Module, target: Target, where: Path, data: FeatureData, config: TrainConfig,
          loss_options: dict | None, state: dict) -> None:
    manifest = {
        "method": method_cls.name, "target": target.fingerprint(),
        "architecture": method_cls.architecture(net), "loss": method_cls.loss_config(**(loss_options or {})),
        "training": {"config": dataclasses.asdict(config), "data": str(data.directory),
                     "data_samples": len(data.samples), "data_answer_tokens": data.tokens(list(range(len(data.samples)))),
                     "datagen": data.manifest["settings"], "epochs_done": state["epoch"], "steps": state["step"],
                     "seconds": round(state["seconds"], 1), "stopped_early": state.get("stopped_early", False),
                     "init": str(state["init"]) if state.get("init") else None,
                     "evals": state["evals"], "env": env.capture()},
    }
    ckpt.save(where, {k: v for k, v in net.state_dict().items()}, manifest)


class _Logger:
    """train_log.csv (every step) and eval_log.csv (every epoch); TensorBoard when installed."""

    def __init__(self, out: Path, enabled: bool = True) -> None:
        """``enabled=False`` (ranks other than 0) writes nothing."""
        self.out, self.enabled = out, enabled
        self.files: dict[str, tuple] = {}
        self.board = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.board = SummaryWriter(str(out / "tensorboard"))
            except ImportError:
                pass

    def _write(self, name: str, row: dict) -> None:
        if not self.enabled:
            return
        if name not in self.files:
            path = self.out / name
            existing = path.is_file()
            handle = open(path, "a", newline="")
            writer = csv.DictWriter(handle, fieldnames=list(row), extrasaction="ignore")
            if not existing:
                writer.writeheader()
            self.files[name] = (handle, writer)
        handle, writer = self.files[name]
        writer.writerow(row)
        handle.flush()

    def step(self, row: dict) -> None:
        self._write("train_log.csv", row)
        if self.board:
            for key, value in row.items():
                self.board.add_scalar(f"train/{key}", value, row["step"])

    def eval(self, row: dict) -> None:
        self._write("eval_log.csv", row)
        if self.board:
            for key, value in row.items():
                self.board.add_scalar(f"eval/{key}", value, row["step"])

    def close(self) -> None:
        for handle, _ in self.files.values():
            handle.close()
        if self.board:
            self.board.close()
