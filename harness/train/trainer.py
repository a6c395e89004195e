"""The one training loop for every learned drafter: the method supplies a network and an objective.

``python -m harness train --method eagle2 --data DIR --out DIR [--preset cpu|gpu]``. AdamW with linear
warm-up and linear decay, gradient clipping by value (EAGLE), bf16 autocast on CUDA and fp32 on CPU
(``precision=bf16`` asks for bf16 autocast on a CPU too), fixed seeds, a held-out split evaluated every epoch
and, with ``eval_every``, every N steps (top-1 agreement with the target per depth), a checkpoint at each
evaluation, resume at the step where a run stopped (the batch order and the random state are restored, so a
resumed run equals an uninterrupted one), CSV loss logs
(TensorBoard too if it is installed), an optional wall-clock budget after which training stops at the next
batch, and an optional plateau stop: ``patience`` evaluations in a row without a new best held-out depth-1
top-1.
Under ``torchrun --nproc_per_node=N`` the ranks train one network data-parallel (harness/train/distributed.py):
each global batch is split by rank, rank 0 writes checkpoints and logs, and the loss curve is one process's.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import pickle
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from harness import checkpoint as ckpt
from harness import env
from harness.errors import UserError
from harness.learned import LearnedDrafter, Objective
from harness.target import Target
from harness.train import distributed
from harness.train.data import FeatureData


PRECISIONS = ("auto", "fp32", "bf16")


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
    eval_every: int | None = None        # also evaluate and checkpoint every N steps (epochs of a large folder
                                         # are long; a run killed between checkpoints loses at most N steps)
    patience: int | None = None          # stop after this many evaluations without a new best top1_depth1
    holdout_from: int = 0                # draw the held-out samples from this sample index on: past the prefix
                                         # an --init draft trained on, so its held-out top-1 is not inflated
    holdout_of: int | None = None        # draw the held-out samples as the first N samples alone would (a grown
                                         # data folder keeps the split earlier drafts were measured on)
    precision: str = "auto"              # the loss's forward and backward: "auto" (bf16 autocast on CUDA, fp32 on
                                         # a CPU), "fp32", or "bf16" (autocast on any device: on a CPU with AMX or
                                         # AVX512-BF16 its matmuls run several times faster than fp32's)

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise UserError(f"precision={self.precision!r}: choose one of {', '.join(PRECISIONS)}")


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
    run_env = env.capture()   # now, not at save time: a commit made during a long run is not the code that ran
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    net, objective = method_cls.training_setup(target, data, **(loss_options or {}))
    if init is not None:
        method_cls.warm_start(net, target, init, **(loss_options or {}))
    net = net.to(target.device).train()
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)
    train_ids, held_out = data.split(config.holdout, config.seed, config.holdout_from, config.holdout_of)
    steps_per_epoch = -(-len(train_ids) // config.batch_size)
    total_steps = max(1, min(steps_per_epoch * config.epochs, config.max_steps or steps_per_epoch * config.epochs))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(
        (step + 1) / config.warmup_steps, max(0.0, (total_steps - step) / max(1, total_steps - config.warmup_steps))))
    if main:
        out.mkdir(parents=True, exist_ok=True)
    state_path = out / "trainer_state.pt"
    state = {"epoch": 0, "step": 0, "batch_in_epoch": 0, "seconds": 0.0, "evals": []}
    saved = _load_state(state_path) if main and state_path.is_file() else None
    if group is not None:
        saved = distributed.from_main(saved)
    if saved is not None:
        net.load_state_dict(saved["net"])
        optimizer.load_state_dict(saved["optimizer"])
        schedule.load_state_dict(saved["schedule"])
        state = {"batch_in_epoch": 0, **saved["state"]}
        if "rng" in saved:
            torch.set_rng_state(saved["rng"])
            random.setstate(saved["py_rng"])
        if main:
            print(f"resuming at epoch {state['epoch'] + 1}, batch {state['batch_in_epoch']} (step {state['step']})")
    step_loss = distributed.wrap(net, objective, group) if group is not None else None
    logger = _Logger(out, enabled=main, resumed_at=state["step"] if saved is not None else None)
    autocast = autocast_context(config.precision, target.device)
    started = time.perf_counter() - state["seconds"]

    def checkpoint(where: Path | None, evaluate: bool = True) -> None:
        """Evaluate (held-out top-1 per depth), save ``where`` as a loadable checkpoint, and save what a resume
        needs; rank 0 only, the others wait."""
        state["seconds"] = time.perf_counter() - started
        if main:
            if evaluate:
                evaluation = _evaluate(objective, net, data, held_out, config, target.device)
                state["evals"].append({"epoch": state["epoch"] + (state["batch_in_epoch"] > 0), "step": state["step"],
                                       **evaluation})
                logger.eval(state["evals"][-1])
                print(f"step {state['step']}: " + ", ".join(f"{k} {v:.3f}" for k, v in evaluation.items()))
            if where is not None:
                _save(method_cls, net, target, where, data, config, loss_options, {**state, "init": init}, run_env)
            _save_state({"net": net.state_dict(), "optimizer": optimizer.state_dict(),
                         "schedule": schedule.state_dict(), "state": state, "rng": torch.get_rng_state(),
                         "py_rng": random.getstate()}, state_path)
        if group is not None:
            distributed.barrier()   # the others wait while rank 0 evaluates and saves

    def plateau() -> bool:
        reached = reached_plateau(state["evals"], config.patience)
        return distributed.from_main(reached) if group is not None else reached   # only rank 0 evaluates

    halt = None   # why this run ends before its last epoch: "budget", "steps" or "plateau"
    for epoch in range(state["epoch"], config.epochs):
        rng = random.Random(f"{config.seed}:{epoch}")
        for indices in data.groups(train_ids, config.batch_size, rng)[state["batch_in_epoch"]:]:
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
            state["batch_in_epoch"] += 1
            logger.step({"step": state["step"], "epoch": epoch + 1, "lr": schedule.get_last_lr()[0],
                         "seconds": round(time.perf_counter() - started, 1), **logs})
            over_time = bool(config.time_budget_s and time.perf_counter() - started > config.time_budget_s)
            if group is not None:
                over_time = distributed.any_rank(over_time)
            if over_time:
                halt = "budget"
            elif state["step"] >= total_steps:
                halt = "steps"
            elif config.eval_every and state["step"] % config.eval_every == 0 and \
                    state["batch_in_epoch"] < steps_per_epoch:   # an epoch's end evaluates anyway
                checkpoint(out / "latest")
                halt = "plateau" if plateau() else None
            if halt:
                break
        if halt in ("budget", "plateau") and state["batch_in_epoch"] < steps_per_epoch:
            if halt == "budget":   # not the end: a rerun with a larger budget resumes at this very step
                checkpoint(out / "latest")
            break
        state.update(epoch=epoch + 1, batch_in_epoch=0)
        checkpoint(out / f"epoch_{epoch + 1}")
        if halt or plateau():
            halt = halt or "plateau"
            break
    stopped_early = halt in ("budget", "plateau") or state["step"] < steps_per_epoch * config.epochs
    if main and halt:
        print(f"stopped ({halt}) after {state['step']} steps, {state['seconds']:.0f} s")
    if main:
        _save(method_cls, net, target, out, data, config, loss_options,
              {**state, "stopped_early": stopped_early, "stopped_by": halt, "init": init}, run_env)
    logger.close()
    return out


def _save_state(state: dict, path: Path) -> None:
    """Write the resume state beside ``path``, then rename it over: a run killed while saving (a session's end
    can come at any moment) keeps its previous state instead of a truncated file."""
    tmp = path.with_suffix(".tmp")   # as datagen writes its shards
    torch.save(state, tmp)
    tmp.replace(path)


def _load_state(path: Path) -> dict:
    """The resume state, or a message saying what the unreadable file is (not a stack trace from pickle)."""
    try:
        return torch.load(path, weights_only=False)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as error:
        raise UserError(f"{path} cannot be read ({str(error)[:120]}); it holds the resume state of this run: move "
                        f"it away to start the run over from step 0") from None


def _drop_rows_after(path: Path, step: int) -> None:
    """Rewrite a log without its rows past ``step``, so each step appears once, as the resumed run made it."""
    if not path.is_file():
        return
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
    kept = [row for row in rows if int(row["step"]) <= step]
    if len(kept) < len(rows):
        with open(path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=reader.fieldnames)
            writer.writeheader()
            writer.writerows(kept)


def autocast_context(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast for the training forward and backward where ``precision`` asks for it ("auto": on CUDA only);
    the weights and the optimizer stay fp32 either way."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def reached_plateau(evals: list[dict], patience: int | None, key: str = "top1_depth1") -> bool:
    """True when the last ``patience`` evaluations brought no new best ``key`` (held-out depth-1 top-1)."""
    if not patience or len(evals) <= patience:
        return False
    best_before = max(e.get(key, 0.0) for e in evals[:-patience])
    return all(e.get(key, 0.0) <= best_before for e in evals[-patience:])


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
          loss_options: dict | None, state: dict, run_env: dict) -> None:
    manifest = {
        "method": method_cls.name, "target": target.fingerprint(),
        "architecture": method_cls.architecture(net), "loss": method_cls.loss_config(**(loss_options or {})),
        "training": {"config": dataclasses.asdict(config), "data": str(data.directory),
                     "data_samples": len(data.samples), "data_answer_tokens": data.tokens(list(range(len(data.samples)))),
                     "datagen": data.manifest["settings"], "epochs_done": state["epoch"], "steps": state["step"],
                     "seconds": round(state["seconds"], 1), "stopped_early": state.get("stopped_early", False),
                     "stopped_by": state.get("stopped_by"),
                     "init": str(state["init"]) if state.get("init") else None,
                     "evals": state["evals"], "env": run_env},
    }
    ckpt.save(where, {k: v for k, v in net.state_dict().items()}, manifest)


class _Logger:
    """train_log.csv (every step) and eval_log.csv (every evaluation: each epoch's end and every ``eval_every`` steps);
    TensorBoard when installed."""

    def __init__(self, out: Path, enabled: bool = True, resumed_at: int | None = None) -> None:
        """``enabled=False`` (ranks other than 0) writes nothing. ``resumed_at``: the step a resumed run starts
        after; a killed run logged steps past its last saved state, which the resumed run logs again. ``None``
        (a fresh start) clears the logs: a run killed before its first saved state left rows a fresh start
        would otherwise append to."""
        self.out, self.enabled = out, enabled
        self.files: dict[str, tuple] = {}
        self.board = None
        for name in ("train_log.csv", "eval_log.csv") if enabled else ():
            if resumed_at is None:
                (out / name).unlink(missing_ok=True)
            else:
                _drop_rows_after(out / name, resumed_at)
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
