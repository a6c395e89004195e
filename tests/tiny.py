"""Tiny random targets built from a config (no weights on disk), and a test drafter with real trees."""
from __future__ import annotations

import copy
import importlib.util
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

from harness.drafter import Drafter
from harness.target import Target
from harness.tree import DraftTree

FAMILIES = ("llama", "qwen2")


def tiny_model(family: str = "llama", vocab: int = 96, seed: int = 0, layers: int = 2, attention: str = "sdpa"):
    common = dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                  tie_word_embeddings=False, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    config = LlamaConfig(**common) if family == "llama" else Qwen2Config(**common)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation=attention).eval()
    with torch.no_grad():  # sharper logits than the default init, so greedy text is not all ties
        model.get_output_embeddings().weight.mul_(8.0)
    return model


def tiny_target(family: str = "llama", vocab: int = 96, seed: int = 0, max_len: int = 512,
                attention: str = "sdpa") -> Target:
    return Target(tiny_model(family, vocab, seed, attention=attention), tokenizer=None, model_id=f"tiny-{family}",
                  max_len=max_len)


class NoisyTreeDrafter(Drafter):
    """Drafts a full top-k tree from a perturbed copy of the target: many accepts, many rejects."""

    name = "noisy-tree"

    def __init__(self, target: Target, depth: int = 3, top_k: int = 2, noise: float = 0.5, seed: int = 1) -> None:
        super().__init__(target)
        self.depth, self.top_k = depth, top_k
        self.model = copy.deepcopy(target.model)   # any family: a perturbed copy of the target itself
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in self.model.parameters():
                p.add_(noise * p.std() * torch.randn(p.shape, generator=generator))

    def start(self, prompt, out, sampling) -> None:
        super().start(prompt, out, sampling)
        self.context = prompt.tolist()

    @torch.no_grad()
    def propose(self, root: Tensor) -> DraftTree:
        tokens, parents, frontier = [int(root)], [-1], [(0, self.context + [int(root)])]
        for _ in range(self.depth):
            next_frontier = []
            for node, prefix in frontier:
                logits = self.model(torch.tensor([prefix])).logits[0, -1]
                for token in logits.topk(self.top_k).indices.tolist():
                    tokens.append(token)
                    parents.append(node)
                    next_frontier.append((len(tokens) - 1, prefix + [token]))
            frontier = next_frontier
        return DraftTree(torch.tensor(tokens), torch.tensor(parents))

    def accept(self, tree, verdict, out) -> None:
        self.context.extend(tree.tokens[verdict.path].tolist())


def hf_greedy(model, prompt: Tensor, max_new_tokens: int) -> list[int]:
    """Reference greedy continuation by full recomputation (no cache), stopping at eos id 1."""
    ids = prompt.tolist()
    out: list[int] = []
    with torch.no_grad():
        while len(out) < max_new_tokens:
            token = int(model(torch.tensor([ids])).logits[0, -1].argmax())
            ids.append(token)
            out.append(token)
            if token == 1:
                break
    return out


def save_tiny_target(path, family: str = "llama", vocab: int = 96) -> str:
    """A loadable target folder: tiny random weights and a word-level tokenizer over w0..wN."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<s>", "</s>", "<unk>"] + [f"w{i}" for i in range(vocab - 3)]
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    tiny_model(family, vocab).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def tiny_plan(target_dir: str, out, suite: str, **settings):
    """A runner Plan (vanilla and PLD, no warm-up, unless settings say otherwise) on a tiny target folder."""
    from harness.runner import Plan

    base = dict(methods=("vanilla", "pld"), suites=(suite,), target=target_dir, out=out, warmup=0)
    return Plan(**{**base, **settings})


def load_benchmark(name: str) -> ModuleType:
    """A script of benchmarks/ imported as a module (the folder is not a package), for tests of its helpers."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).parents[1] / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
