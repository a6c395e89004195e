"""What every registered method shares, and the registry methods join.

A method is one module in ``methods/`` whose class carries ``@METHODS.register("name")``; its settings
are a frozen dataclass ``Options`` whose fields the CLI sets with ``--opt name.field=value``. What the
runner times for it is its ``turn_decoder()``: for a drafting method (harness/drafter.py) the shared
speculative loop, for a reference row that decodes whole turns by other means, the row itself.
"""
from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

from harness.errors import UserError
from harness.registry import Registry

if TYPE_CHECKING:
    from harness.decode import TurnDecoder
    from harness.target import Target


@dataclasses.dataclass(frozen=True)
class NoOptions:
    """A method without settings."""


class Method(ABC):
    name: ClassVar[str]
    summary: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions
    needs_checkpoint: ClassVar[bool] = False   # learned drafts; checkpoint "random" builds an untrained one

    def __init__(self, target: Target, checkpoint: str | None = None, **options: Any) -> None:
        self.target = target
        self.checkpoint = checkpoint
        self.options = parse_options(self.Options, options, self.name)

    @abstractmethod
    def turn_decoder(self) -> TurnDecoder:
        """What answers one turn of this method, as the runner times it (harness/decode.py)."""

    def settings(self) -> dict[str, Any]:
        return dataclasses.asdict(self.options)


METHODS: Registry[Method] = Registry("method", Method, package="methods", group="harness.methods")


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
