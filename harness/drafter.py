"""What a drafting method implements, and the registry methods join.

A Drafter proposes a DraftTree rooted at the target's last token, and is told after every step
what the verifier kept, so it alone repairs its own state (its KV cache, its context). A method is
one module in ``methods/`` whose class carries ``@METHODS.register("name")``; its settings are a
frozen dataclass ``Options`` whose fields the CLI sets with ``--opt name.field=value``.
"""
from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from typing import Any, ClassVar

from torch import Tensor

from harness.errors import UserError
from harness.registry import Registry
from harness.sampling import SamplingParams
from harness.target import Target, TargetOut
from harness.tree import DraftTree
from harness.verify import Verdict, Verifier


@dataclasses.dataclass(frozen=True)
class NoOptions:
    """A method without settings."""


class Drafter(ABC):
    name: ClassVar[str]
    summary: ClassVar[str] = ""
    lossless: ClassVar[bool] = True     # False only for acceptance rules that change the output distribution
    Options: ClassVar[type] = NoOptions
    needs_checkpoint: ClassVar[bool] = False   # learned drafts; checkpoint "random" builds an untrained one

    def __init__(self, target: Target, checkpoint: str | None = None, **options: Any) -> None:
        self.target = target
        self.checkpoint = checkpoint
        self.options = parse_options(self.Options, options, self.name)
        self.sampling = SamplingParams()

    def start(self, prompt: Tensor, out: TargetOut, sampling: SamplingParams) -> None:
        """A new sequence: prompt [T] was prefilled and out holds its features; reset own state."""
        self.sampling = sampling

    @abstractmethod
    def propose(self, root: Tensor) -> DraftTree:
        """A tree whose node 0 is root (a 0-d long tensor), the target's last, uncached token."""

    def accept(self, tree: DraftTree, verdict: Verdict, out: TargetOut) -> None:
        """The verifier kept tree nodes verdict.path and drew verdict.bonus; out is the tree's forward."""

    def verifier(self) -> Verifier:
        """The acceptance rule for this method's trees: the exact one unless the method says otherwise
        (a lossy rule must come with ``lossless = False``, which labels every result)."""
        return Verifier()

    def settings(self) -> dict[str, Any]:
        return dataclasses.asdict(self.options)


METHODS: Registry[Drafter] = Registry("method", Drafter, package="methods", group="harness.methods")


def parse_options(options_type: type, values: dict[str, Any], method: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(options_type)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        valid = ", ".join(sorted(fields)) or "none"
        raise UserError(f"method {method!r} has no option {', '.join(unknown)} (valid: {valid})")
    typed = {}
    for key, value in values.items():
        default = getattr(options_type(), key)
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if default is not None and type(value) is not type(default):
            raise UserError(f"option {method}.{key}={value!r}: expected {type(default).__name__}")
        typed[key] = value
    return options_type(**typed)
