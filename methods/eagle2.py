"""EAGLE-2: a feature-level draft (fc + one decoder layer) that grows a dynamic top-k tree.

The network (docs/reference.md §1.3.1): fc over [token embedding, target feature] (2H -> H), then one decoder
layer of the target's own family with no input norm; the target's frozen embedding and LM head
are borrowed, never copied. Position t takes (f_t, x_{t+1}) and predicts f_{t+1}; deeper tree levels
feed the draft's own predicted features back in. The tree (§2.2): level 1 is the top-k of the last
context output; each of ``depth`` expansions feeds the k best frontier nodes together, records all
k*k children with cumulative log-probabilities, and keeps the global top-k as the next frontier;
finally the best ``total_tokens - 1`` recorded nodes form the tree. Drafts are deterministic (top-k,
no temperature), so the verifier's point-mass rule keeps sampling lossless.
This module is the family base: HASS, FSPAD and CORAL import the network and override what their
papers change. Training (the EAGLE loss, aligned multi-pass forwards) is in methods/_eagle_train.py.
"""
from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from harness import static_shapes
from harness.drafter import METHODS
from harness.kvcache import SlotCache, cache_keyword
from harness.learned import Accepts, LearnedDrafter
from harness.sampling import SamplingParams
from harness.target import Target, TargetOut
from harness.tree import DraftTree
from harness.verify import Verdict
from methods import _eagle_io as eagle_io
from methods._eagle_train import EagleLoss, EagleObjective

FIXED_CONTEXT_MAX = 32   # longer context passes (the prompt's) run eagerly at their exact size


@dataclass(frozen=True)
class EagleOptions:
    total_tokens: int = 60   # tree nodes scored by the target, root included
    depth: int = 5           # expansions after level 1: the tree has depth + 1 draft levels
    top_k: int = 10          # children per expanded node, and frontier width


class EagleNet(nn.Module):
    """fc([e(x_{t+1}), f_t]) -> one decoder layer (no input norm) -> predicted f_{t+1}."""

    def __init__(self, target_model: nn.Module, bias: bool = True) -> None:
        super().__init__()
        config = copy.deepcopy(target_model.config)
        config.num_hidden_layers = 1
        config._attn_implementation = "sdpa"
        if getattr(config, "layer_types", None):
            # The draft layer attends over its whole context with its own causal masks, in training and
            # drafting alike: a full-attention layer, whatever the target's first layer is.
            config.layer_types = ["full_attention"]
        decoder = target_model.get_decoder()
        hidden = config.hidden_size
        self.config = config
        self.fc = nn.Linear(2 * hidden, hidden, bias=bias)
        layer = type(decoder.layers[0])(config, layer_idx=0)
        layer.input_layernorm = nn.Identity()
        self.layers = nn.ModuleList([layer])
        self.rotary = type(decoder.rotary_emb)(config=config)
        self.cache_keyword = cache_keyword(layer.forward)

    def forward(self, embeds: Tensor, features: Tensor, positions: Tensor, mask: Tensor, cache=None) -> Tensor:
        """embeds, features: [B, n, H]; positions [B, n]; mask [B, 1, n, kv] additive -> [B, n, H]."""
        x = self.fc(torch.cat([embeds, features.to(embeds.dtype)], dim=-1))
        rope = self.rope(x, positions)
        return self.layers[0](x, attention_mask=mask, position_ids=positions, use_cache=cache is not None,
                              position_embeddings=rope, **{self.cache_keyword: cache})

    def rope(self, x: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
        """The family's rotary embedding; families with one per layer type (Gemma 3) are asked for full attention."""
        if "layer_type" in inspect.signature(self.rotary.forward).parameters:
            return self.rotary(x, positions, "full_attention")
        return self.rotary(x, positions)

    def split(self, out: Tensor) -> tuple[Tensor, Tensor]:
        """Net output -> (features for the LM head, features fed to the next draft level); EAGLE uses one for both."""
        return out, out


def causal_mask(queries: int, offset: int, dtype: torch.dtype, device) -> Tensor:
    """[1, 1, q, offset + q] additive mask: query i sees keys 0 .. offset + i."""
    allowed = torch.ones(queries, offset + queries, dtype=torch.bool, device=device).tril(offset)
    return additive(allowed, dtype)


def additive(allowed: Tensor, dtype: torch.dtype) -> Tensor:
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min)[None, None]


@METHODS.register("eagle2", "eagle-2", "eagle")
class Eagle2(LearnedDrafter):
    summary = "EAGLE-2: feature-level draft with a dynamic top-k tree (needs a trained checkpoint)"
    Options = EagleOptions
    net_class = EagleNet

    def __init__(self, target: Target, checkpoint: str | None = None, **options) -> None:
        super().__init__(target, checkpoint, **options)   # self.net, read from the checkpoint
        extra = (self.options.depth + 1) * self.options.top_k + 8
        self.cache = SlotCache(1, target.max_len + extra)
        self.stable = 0
        # With the target's --compile, the draft's steps run in fixed shapes too, compiled unless "static"
        # (tree levels always run one function; only its window and compilation depend on the mode).
        mode = target.compile_mode
        self._compiled_level = None if mode == "static" else static_shapes.compiled(self._level_step, mode)
        self._fixed_context = static_shapes.compiled(self._context_step, mode)

    # ---- the learned-drafter contract (harness/learned.py) ----------------------------------------

    loss_defaults: EagleLoss = EagleLoss()
    objective_class: type[EagleObjective] = EagleObjective
    # Drafts with EAGLE-2's network whose harness checkpoints can start a training run (--init): the HASS
    # two-stage schedule, or continuing a committed EAGLE-2 draft under another objective.
    accepts = Accepts(warm_start=("eagle2", "hass", "coral"))

    @classmethod
    def build_net(cls, target: Target, architecture: Mapping[str, Any] | None = None) -> nn.Module:
        return cls.net_class(target.model, bias=(architecture or {}).get("bias", True))

    @classmethod
    def architecture(cls, net: nn.Module) -> dict:
        return {"bias": net.fc.bias is not None}

    @classmethod
    def read_checkpoint(cls, where: Path, target: Target, also: tuple[str, ...]) -> tuple[dict[str, Tensor], dict]:
        """A harness checkpoint or a released EAGLE / EAGLE-2 / HASS folder (methods/_eagle_io.py)."""
        return eagle_io.read_checkpoint(where, cls.name, target.fingerprint(), also)

    @classmethod
    def training_setup(cls, target: Target, data=None, **loss_overrides) -> tuple[nn.Module, EagleObjective]:
        loss = type(cls.loss_defaults)(**cls.loss_config(**loss_overrides))
        net = cls.build_net(target).to(device=target.device, dtype=torch.float32)
        return net, cls.objective_class(target.embed, target.lm_head, loss)

    @classmethod
    def export(cls, net: nn.Module, target: Target, out: Path, flavor: str,
               dtype: torch.dtype = torch.float16) -> Path:
        """The EAGLE layout as the EAGLE repo, vLLM or SGLang reads it (methods/_eagle_io.py, docs/engines.md)."""
        return eagle_io.export(net.state_dict(), target, Path(out), flavor, dtype)

    # ---- drafting ---------------------------------------------------------------------------------

    def start(self, prompt: Tensor, out: TargetOut, sampling: SamplingParams) -> None:
        super().start(prompt, out, sampling)
        self.cache.reset()
        self.stable = 0
        self.pending_features = out.hidden                      # [T, H] f_0 .. f_{T-1}
        self.pending_tokens = prompt[1:].tolist()               # x_1 .. x_{T-1}; the root completes them

    def accept(self, tree: DraftTree, verdict: Verdict, out: TargetOut) -> None:
        self.pending_features = out.hidden[verdict.path.to(out.hidden.device)]
        self.pending_tokens = tree.tokens[verdict.path[1:]].tolist()

    @torch.no_grad()
    def propose(self, root: Tensor) -> DraftTree:
        device = self.target.device
        tokens = self.pending_tokens + [int(root)]
        root_out = self.context_pass(tokens, self.pending_features)
        self.stable += len(tokens)
        tree = self.grow(root, root_out)
        self.cache.keep(self.stable, torch.arange(0, device=device))   # drop the expansion entries
        return tree

    def context_pass(self, tokens: list[int], features: Tensor) -> Tensor:
        """Feed the newly committed tokens (with the target features before them) into the draft's cache;
        the output at the last one, the root, starts the tree. Under --compile the tokens go in as a chain
        padded like a tree (fixed shapes, harness/static_shapes.py); a pass longer than FIXED_CONTEXT_MAX
        (the prompt's) runs eagerly at its exact size."""
        n, device, dtype = len(tokens), self.target.device, self.target.dtype
        if self._fixed_context is None or n > FIXED_CONTEXT_MAX:
            positions = torch.arange(self.stable, self.stable + n, device=device)[None]
            out = self.net(self.target.embed(torch.tensor(tokens, device=device))[None], features[None], positions,
                           causal_mask(n, self.stable, dtype, device), self.cache)
            return out[0, -1]
        chain = DraftTree.chain(torch.tensor(tokens[0]), torch.tensor(tokens[1:], dtype=torch.long))
        step = static_shapes.tree_step(chain, self.stable, self.target.bucket, self.cache.max_len, device)
        padded = torch.zeros(step.ids.shape[1], features.shape[-1], dtype=features.dtype, device=device)
        padded[:n] = features
        self.cache.mark_static_addresses()
        try:
            out = self._fixed_context(step.ids, padded, step.positions, additive(step.mask[0, 0], dtype), step.write_at)
        finally:
            self.cache.write_at(None)
        return out[n - 1].clone()

    def _context_step(self, ids: Tensor, features: Tensor, positions: Tensor, mask: Tensor,
                      write_at: Tensor) -> Tensor:
        self.cache.write_at(write_at, mask.shape[-1])
        return self.net(self.target.embed(ids), features[None], positions, mask, self.cache)[0]

    def top_tokens(self, features: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """[n, H] draft features -> the k best (log-probabilities, token ids), each [n, k]; no temperature,
        since drafts are top-k. CORAL overrides this to score only part of the vocabulary."""
        top = torch.log_softmax(self.target.lm_head(features).float(), dim=-1).topk(k)
        return top.values, top.indices

    def grow(self, root: Tensor, root_out: Tensor) -> DraftTree:
        k, device = self.options.top_k, self.target.device
        for_head, for_next = self.net.split(root_out)
        top_scores, top_ids = self.top_tokens(for_head[None], k)
        tokens, scores, features = top_ids[0], top_scores[0], for_next.expand(k, -1)
        rec_tokens, rec_scores, rec_parents = [tokens], [scores], [torch.full((k,), -1, device=device)]
        frontier_ids, recorded = torch.arange(k, device=device), k
        # The levels' keys go to the draft cache's slots stable + level * k + i. Each frontier node sees the
        # stable context, its ancestors' slots and its own; the window covers every level (rounded up to the
        # target's bucket under --compile, so all steps share a few shapes).
        bucket = 1 if self.target.compile_mode == "off" else self.target.bucket
        window = static_shapes.window_size(self.stable + (self.options.depth + 1) * k, bucket, self.cache.max_len)
        write_at = torch.arange(self.stable, self.stable + k, device=device)
        allowed = torch.zeros(k, window, dtype=torch.bool, device=device)
        allowed[:, :self.stable] = True
        allowed[torch.arange(k, device=device), write_at] = True
        for level in range(self.options.depth):
            positions = torch.full((1, k), self.stable + level, device=device)
            child_ids, child_scores, best, tokens, scores, features, allowed, write_at = self.run_level(
                tokens, features, scores, allowed, positions, write_at)
            rec_tokens.append(child_ids)
            rec_scores.append(child_scores)
            rec_parents.append(frontier_ids.repeat_interleave(k))
            frontier_ids = recorded + best
            recorded += k * k
        self.cache.write_at(None)
        return self.select(root, torch.cat(rec_tokens), torch.cat(rec_scores), torch.cat(rec_parents))

    def run_level(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        """One tree level through ``_level_step``: compiled under --compile (outputs copied, since CUDA-graph
        outputs are overwritten by the next replay), called as is otherwise."""
        if self._compiled_level is None:
            return self._level_step(*inputs)
        self.cache.mark_static_addresses()
        try:
            return tuple(t.clone() for t in self._compiled_level(*inputs))
        finally:
            self.cache.write_at(None)

    def _level_step(self, tokens: Tensor, features: Tensor, scores: Tensor, allowed: Tensor, positions: Tensor,
                    write_at: Tensor) -> tuple[Tensor, ...]:
        """The k frontier nodes (token ids, features, cumulative log q; allowed [k, window] attention) through
        the net; their k * k children (ids, cumulative scores); the k best of those (indices into the k * k)
        and, for them, the next level's tokens, scores, features, attention rows and cache slots."""
        k = self.options.top_k
        self.cache.write_at(write_at, allowed.shape[1])
        out = self.net(self.target.embed(tokens)[None], features[None], positions,
                       additive(allowed, self.target.dtype), self.cache)[0]
        for_head, for_next = self.net.split(out)
        top_scores, top_ids = self.top_tokens(for_head, k)
        child_scores = (scores[:, None] + top_scores).flatten()
        child_ids = top_ids.flatten()
        best = child_scores.topk(k).indices
        parent = best // k
        next_allowed = allowed[parent]                      # the parent's view: context, its ancestors, itself
        next_write = write_at + k
        next_allowed[torch.arange(k, device=allowed.device), next_write] = True   # and the child itself
        return (child_ids, child_scores, best, child_ids[best], child_scores[best], for_next[parent], next_allowed,
                next_write)

    def select(self, root: Tensor, tokens: Tensor, scores: Tensor, parents: Tensor) -> DraftTree:
        """Keep the best total_tokens - 1 recorded nodes; a stable sort keeps every parent before its child."""
        keep = min(self.options.total_tokens - 1, tokens.shape[0])
        order = torch.sort(scores, descending=True, stable=True).indices[:keep]
        chosen = order.sort().values
        node_of = torch.full((tokens.shape[0],), -1, dtype=torch.long, device=tokens.device)
        node_of[chosen] = torch.arange(1, keep + 1, device=tokens.device)
        chosen_parents = parents[chosen]
        node_parents = torch.where(chosen_parents < 0, 0, node_of[chosen_parents.clamp_min(0)])
        return DraftTree(tokens=torch.cat([root.reshape(1).to(tokens), tokens[chosen]]).cpu(),
                         parents=torch.cat([torch.tensor([-1]), node_parents.cpu()]))
