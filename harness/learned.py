"""The contract of a learned drafter: a network trained for one target, its checkpoints, warm starts, export.

A learned drafter is a Drafter (it drafts like any other) that also declares, as class methods, how
its network is built from the target and an ``architecture`` (the dict its checkpoints record), how
it is trained (``loss_defaults``, ``training_setup`` -> network and an ``Objective``), which other
methods' checkpoints it accepts (``accepts``), how a sibling's weights map onto its network
(``adapt_warm_start``, ``fresh_keys``), how checkpoints are read (``read_checkpoint``: the harness's
own layout and any released one) and how it is written for serving engines (``export``). Loading (``load``), warm starts (``warm_start``), loss options (``loss_config``) and the
default checkpoint place are implemented here once; the trainer (harness/train/trainer.py) and the
CLI (``train``, ``export``, ``run``) use nothing else. A new learned drafter is one module in
``methods/`` that subclasses this and fills in the abstract methods (docs/architecture.md).
"""
from __future__ import annotations

import dataclasses
from abc import abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Mapping, Protocol

import torch
from torch import Tensor, nn

from harness.drafter import Drafter
from harness.errors import UserError
from harness.method import METHODS
from harness.target import Target

if TYPE_CHECKING:
    from harness.train.data import Batch, FeatureData

CHECKPOINTS = Path(__file__).resolve().parents[1] / "checkpoints"   # committed drafts: <target>/<method>
RANDOM = "random"   # the checkpoint name that builds an untrained network (tests, smoke runs)


class Objective(Protocol):
    """What the trainer asks of a method's training objective."""

    def loss(self, net: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        """The loss to minimise on one batch, and the figures to log (floats, by name)."""

    def evaluate(self, net: nn.Module, batch: Batch, depths: int) -> dict[str, tuple[int, int]]:
        """Held-out (hits, count) per metric, e.g. top-1 agreement with the target at tree depth j."""


@dataclass(frozen=True)
class Accepts:
    """Other methods whose harness checkpoints a learned drafter reads; its own are always read.

    ``run``: drafts it runs (and exports) as its own, e.g. an ablation that drafts with another method's
    network. ``warm_start``: drafts a training run may start from (``train --init``); their weights go
    through ``adapt_warm_start``."""

    run: tuple[str, ...] = ()
    warm_start: tuple[str, ...] = ()


class LearnedDrafter(Drafter):
    needs_checkpoint = True
    accepts: ClassVar[Accepts] = Accepts()
    loss_defaults: ClassVar[Any]                       # a frozen dataclass of the objective's options

    def __init__(self, target: Target, checkpoint: str | None = None, **options: Any) -> None:
        super().__init__(target, checkpoint, **options)
        self.net, self.draft_config = self.load(target, checkpoint)

    # ---- the network ----------------------------------------------------------------------------

    @classmethod
    @abstractmethod
    def build_net(cls, target: Target, architecture: Mapping[str, Any] | None = None) -> nn.Module:
        """An untrained network for ``target``; ``architecture`` is what ``architecture(net)`` recorded
        (empty: the method's defaults, sized to the target)."""

    @classmethod
    @abstractmethod
    def architecture(cls, net: nn.Module) -> dict:
        """What ``build_net`` needs to rebuild ``net``'s shape; saved in every checkpoint's config."""

    # ---- checkpoints ----------------------------------------------------------------------------

    @classmethod
    @abstractmethod
    def read_checkpoint(cls, where: Path, target: Target, also: tuple[str, ...]) -> tuple[dict[str, Tensor], dict]:
        """Tensors (this network's key names) and a harness config (``architecture`` included) from a checkpoint
        folder of this method or of a method in ``also``, in the harness layout or a released one; refuses a
        checkpoint made for another target (harness/checkpoint.py ``check_fingerprint``)."""

    @classmethod
    def default_checkpoint(cls, target: Target) -> Path:
        """Where the committed draft for ``target`` lives."""
        return CHECKPOINTS / target.model_id.replace("/", "--") / cls.name

    @classmethod
    def load(cls, target: Target, checkpoint: str | None) -> tuple[nn.Module, dict]:
        """The network, ready to draft on the target's device and dtype, and its checkpoint's config;
        ``random`` builds an untrained one with a fixed seed."""
        if checkpoint == RANDOM:
            torch.manual_seed(0)
            net, config = cls.build_net(target), {}
        else:
            where = Path(checkpoint) if checkpoint else cls.default_checkpoint(target)
            if not where.exists():
                raise UserError(f"{cls.name} needs a trained draft for {target.model_id!r}: pass --checkpoint "
                                f"{cls.name}=DIR (train one: python -m harness train --method {cls.name})")
            tensors, config = cls.read_checkpoint(where, target, cls.accepts.run)
            net = cls.build_net(target, config.get("architecture", {}))
            missing, unexpected = net.load_state_dict(tensors, strict=False)
            if missing or unexpected:
                raise UserError(f"checkpoint {where} does not fit {cls.name}: missing {missing[:3]}, "
                                f"unexpected {unexpected[:3]}")
        return net.to(device=target.device, dtype=target.dtype).eval().requires_grad_(False), config

    @classmethod
    def load_net(cls, target: Target, checkpoint: str | None) -> nn.Module:
        """``load``'s network alone (export, engines, tests)."""
        return cls.load(target, checkpoint)[0]

    # ---- training -------------------------------------------------------------------------------

    @classmethod
    def loss_config(cls, **overrides: Any) -> dict:
        """``loss_defaults`` with ``overrides`` (``train --loss key=value``), as saved in checkpoints; unknown keys
        are one line naming the valid ones."""
        try:
            return dataclasses.asdict(dataclasses.replace(cls.loss_defaults, **overrides))
        except TypeError as exc:
            valid = ", ".join(f.name for f in dataclasses.fields(cls.loss_defaults))
            raise UserError(f"unknown loss option for {cls.name}: {exc} (valid: {valid})") from exc

    @classmethod
    @abstractmethod
    def training_setup(cls, target: Target, data: FeatureData | None = None,
                       **loss_overrides: Any) -> tuple[nn.Module, Objective]:
        """A float32 network to train (on the target's device) and its objective; ``data`` is there for what
        depends on it (a vocabulary layout from its token counts, the feature fields it must hold)."""

    @classmethod
    def warm_start(cls, net: nn.Module, target: Target, init: Path, **loss_overrides: Any) -> None:
        """Load ``init`` (a checkpoint of this method or of one in ``accepts.warm_start``) into ``net`` before
        training; parts the checkpoint lacks must be among ``fresh_keys``. ``loss_overrides`` are the run's
        ``--loss`` options, for a mapping that depends on them."""
        tensors, _ = cls.read_checkpoint(Path(init), target, cls.accepts.warm_start)
        state = cls.adapt_warm_start(net, {k: v.float() for k, v in tensors.items()}, target,
                                     cls.loss_config(**loss_overrides))
        missing, unexpected = net.load_state_dict(state, strict=False)
        if unexpected or set(missing) - set(cls.fresh_keys(net)):
            raise UserError(f"{init} cannot start {cls.name}: missing {missing[:3]}, unexpected {unexpected[:3]}")

    @classmethod
    def adapt_warm_start(cls, net: nn.Module, tensors: dict[str, Tensor], target: Target,
                         loss: dict) -> dict[str, Tensor]:
        """Map a warm start's weights onto this network (``target`` for what the draft copies from it, ``loss``
        the run's loss options); the same network needs no mapping."""
        return tensors

    @classmethod
    def fresh_keys(cls, net: nn.Module) -> list[str]:
        """Parameters a warm start may leave at their initial values (parts the other network lacks)."""
        return []

    # ---- export ---------------------------------------------------------------------------------

    @classmethod
    def export(cls, net: nn.Module, target: Target, out: Path, flavor: str,
               dtype: torch.dtype = torch.float16) -> Path:
        """Write ``net`` as the ``flavor`` engine's loader reads it (harness export --format); returns the folder.
        A UserError names the formats the method has when ``flavor`` is not one of them."""
        raise UserError(f"{cls.name} drafts cannot be exported: no engine has a loader for them")


def learned(method: str, action: str) -> type[LearnedDrafter]:
    """The registered method ``method`` as a learned drafter; a UserError naming ``action`` when it is not one."""
    cls = METHODS.get(method)
    if not issubclass(cls, LearnedDrafter):
        raise UserError(f"method {cls.name!r} has no trained network to {action}")
    return cls
