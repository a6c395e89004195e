"""What a drafting method implements.

A Drafter proposes a DraftTree rooted at the target's last token, and is told after every step
what the verifier kept, so it alone repairs its own state (its KV cache, its context). The loop that
joins it to the target and the verifier is harness/decode.py; drafters with a trained network add the
contract of harness/learned.py. ``METHODS`` (harness/method.py) is imported from here by every method.
"""
from __future__ import annotations

from abc import abstractmethod
from typing import Any

from torch import Tensor

from harness.decode import Speculative, TurnDecoder
from harness.method import METHODS, Method
from harness.sampling import SamplingParams
from harness.target import Target, TargetOut
from harness.tree import DraftTree
from harness.verify import Verdict, Verifier

__all__ = ["METHODS", "Drafter"]


class Drafter(Method):
    # Target layers whose outputs this drafter reads (TargetOut.taps). The decoding loop asks the target for
    # them at each turn, so a run's other methods (vanilla above all) never pay for hidden states they ignore.
    taps: tuple[int, ...] = ()

    def __init__(self, target: Target, checkpoint: str | None = None, **options: Any) -> None:
        super().__init__(target, checkpoint, **options)
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
        """The acceptance rule for this method's trees: the exact one unless the method says otherwise.
        The rule alone says whether the output is lossless (``Verifier.lossless``), which labels every result."""
        return Verifier()

    def turn_decoder(self) -> TurnDecoder:
        return Speculative(self)
