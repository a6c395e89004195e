"""Registries: decorator registration, aliases, did-you-mean, entry-point plugins, layering."""
import ast
from pathlib import Path

import pytest
import torch

from harness.drafter import METHODS, Drafter
from harness.errors import UserError
from harness.registry import Registry
from harness.tree import DraftTree


class Base:
    pass


def test_register_aliases_and_did_you_mean():
    registry = Registry("widget", Base, package="no_such_package_here", group="harness.tests.none")

    @registry.register("eagle2", "eagle-2")
    class Eagle(Base):
        pass

    assert registry.get("eagle-2") is Eagle and registry.names() == ["eagle2"]
    with pytest.raises(UserError, match="did you mean: eagle2"):
        registry.get("eagel2")
    with pytest.raises(ValueError):
        registry.register("eagle-2")(type("Other", (Base,), {}))


def test_third_party_methods_arrive_through_entry_points(monkeypatch):
    registry = Registry("method", Drafter, package="methods", group="harness.methods")

    class FakeEntryPoint:
        name, value = "shout", "plugin:Shout"

        def load(self):
            @registry.register("shout")
            class Shout(Drafter):
                def propose(self, root):
                    return DraftTree.root_only(root)
            return Shout

    monkeypatch.setattr("harness.registry.entry_points", lambda group: [FakeEntryPoint()] if group == "harness.methods" else [])
    assert registry.get("shout").__name__ == "Shout"


def test_harness_core_imports_no_method_or_suite():
    """The layering rule: harness/ never names methods/ or suites/ (plugins reach it through registries)."""
    for path in Path("harness").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n.split(".")[0] in ("methods", "suites") for n in names), f"{path} imports {names}"


def test_vanilla_proposes_the_root_alone():
    assert METHODS.get("baseline").__name__ == "Vanilla"
    tree = METHODS.get("vanilla")(target=None).propose(torch.tensor(4))
    assert tree.tokens.tolist() == [4] and tree.size == 1
