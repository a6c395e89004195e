"""Replay: a method's exact accept lengths without decoding, along the baseline's (vanilla's) answers.

At T = 0 a lossless method emits vanilla's tokens, so what its target forwards would say is known in
advance: one teacher-forced forward over prompt + vanilla's answer gives the features at every
position. ``ReplayTarget`` stands in for ``Target`` behind the decoding loop's own seams (prefill,
score_tree, commit), so the loop, the verifier and the drafters run unchanged and the accounting
(stop tokens, the max_new_tokens cut, max_len, turns) has one owner. A tree node lies on the
continuation when its tokens from the root equal vanilla's next tokens; such a node gets the
teacher-forced features of its position and, as logits, a hard one-hot of vanilla's token after it
(0 there, -inf elsewhere), so the verifier accepts exactly the longest tree path along the continuation
plus the bonus token, at any temperature. A node off the continuation can never be on that path, so it
gets zeros; drafters only read the outputs of accepted nodes. Past the end of vanilla's answer the
continuation is unknown and every node counts as off it; the loop's own cut (stop token, budget) ends
the turn there first. Floating point is the one difference from real decoding: the features come from
one long forward instead of the prefill and tree forwards, so a draft's choice between near-tied tokens
can differ (benchmarks/validate_replay.py measures it).

At T > 0 replay is exact in distribution, not token for token. With deterministic drafts (point masses,
``tree.q is None``: every drafter here) the verifier's rule (harness/verify.py) draws each emitted token
from the target's p, and a child is accepted exactly when its token is the one emitted (a rejected child
is removed from the residual, so it can never be emitted later). Given the text, the accept lengths are
therefore a fixed function of it, and the text has the target's law whatever the draft: vanilla's sampled
answer is a draw of the text every lossless method would emit, and replaying a method along it gives that
draw's accept lengths. All methods replayed along one vanilla answer share the text (common random
numbers), so their paired differences lose the noise of each method sampling its own text. Sampled drafts
(``tree.q`` set: acceptance is random given the text) are refused.
"""
from __future__ import annotations

import torch
from torch import Tensor

from harness.decode import Generation, PromptTooLong, Speculative, TurnDecoder, generate
from harness.errors import UserError
from harness.records import REPLAY_SUFFIX
from harness.sampling import SamplingParams
from harness.target import ContextFull, Target, TargetOut
from harness.tree import DraftTree

SUFFIX = REPLAY_SUFFIX   # replayed cells and rows are labelled <method>-replay


class ReplayTarget:
    """The decoding loop's target, answering from vanilla's answers; everything the loop and the
    drafters read besides the three forwards (tokenizer, max_len, device, ...) is the real target's."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.length = 0
        self._answers: list[list[int]] = []
        self._skipped = ""
        self._ids: list[int] = []
        self._hidden = self._taps = None

    def __getattr__(self, name: str):
        return getattr(self.target, name)

    def begin(self, vanilla_row: dict) -> None:
        """A new question: vanilla's row; each prefill takes the token ids of its next turn. A question vanilla
        could not run is skipped here too, with vanilla's reason."""
        self._answers = [list(turn) for turn in vanilla_row.get("token_ids") or []]
        self._skipped = vanilla_row.get("skipped") or ""

    def prefill(self, prompt: Tensor) -> TargetOut:
        """The teacher-forced forward over prompt + vanilla's answer to it; the prompt's outputs, as Target's."""
        if self._skipped:
            raise PromptTooLong(f"vanilla skipped it: {self._skipped}")
        if not self._answers:
            raise UserError("replay: no vanilla answer left for this prompt (is the vanilla row complete?)")
        prompt = prompt.reshape(-1).cpu()
        self._ids = prompt.tolist() + self._answers.pop(0)
        fed = torch.tensor(self._ids[: self.target.max_len - 1], dtype=torch.long)
        out = self.target.prefill(fed)
        self._hidden = _padded(out.hidden, len(self._ids))
        self._taps = tuple(_padded(tap, len(self._ids)) for tap in out.taps)
        self.length = prompt.shape[0]
        last = [self.length - 1]
        return TargetOut(logits=self._logits(last), hidden=self._hidden[: self.length],
                         taps=tuple(tap[: self.length] for tap in self._taps))

    def score_tree(self, tree: DraftTree) -> TargetOut:
        """What the tree forward would give at the nodes that can matter: those on vanilla's continuation."""
        if tree.q is not None:
            raise UserError("replay needs deterministic drafts: this drafter samples its tree (tree.q), so whether a "
                            "draft token is accepted is random given the text; measure it with real decoding")
        if self.length + tree.size > self.target.max_len:
            raise ContextFull(self.length + tree.size, self.target.max_len)
        positions = self._positions(tree)
        on = [i for i, p in enumerate(positions) if p >= 0]
        index = torch.tensor(on, device=self._hidden.device)
        at = torch.tensor([positions[i] for i in on], device=self._hidden.device)
        logits = torch.zeros(tree.size, self.target.vocab_size, device=self._hidden.device)
        logits[index] = self._logits([positions[i] for i in on])
        return TargetOut(logits=logits, hidden=_rows(self._hidden, tree.size, index, at),
                         taps=tuple(_rows(tap, tree.size, index, at) for tap in self._taps))

    def commit(self, path: Tensor) -> None:
        self.length += path.shape[0]

    def _positions(self, tree: DraftTree) -> list[int]:
        """Each node's position in prompt + answer when it lies on the continuation, else -1."""
        tokens, parents, depth = tree.tokens.tolist(), tree.parents.tolist(), tree.depth.tolist()
        if self.length >= len(self._ids) or tokens[0] != self._ids[self.length]:
            raise UserError("replay: the root is not vanilla's token; the decoding loop and the vanilla row disagree")
        positions = [self.length] + [-1] * (tree.size - 1)
        for i in range(1, tree.size):
            p = self.length + depth[i]
            if positions[parents[i]] >= 0 and p < len(self._ids) and tokens[i] == self._ids[p]:
                positions[i] = p
        return positions

    def _logits(self, positions: list[int]) -> Tensor:
        """[n, V]: vanilla's token after each position as hard one-hot logits (0 there, -inf elsewhere: a point
        mass at every temperature, top-p and top-k); zeros where the answer has ended."""
        rows = torch.zeros(len(positions), self.target.vocab_size, device=self.target.device)
        for row, p in enumerate(positions):
            if p + 1 < len(self._ids):
                rows[row] = float("-inf")
                rows[row, self._ids[p + 1]] = 0.0
        return rows


def _padded(features: Tensor, length: int) -> Tensor:
    """features [n, H] grown to [length, H] with zero rows (positions the forward could not reach)."""
    if features.shape[0] >= length:
        return features[:length]
    return torch.cat([features, features.new_zeros(length - features.shape[0], features.shape[1])])


def _rows(features: Tensor, size: int, index: Tensor, at: Tensor) -> Tensor:
    """[size, H]: features[at] at the rows index, zeros elsewhere."""
    rows = features.new_zeros(size, features.shape[1])
    rows[index] = features[at]
    return rows


def check_decoders(decoders: dict[str, TurnDecoder]) -> None:
    """Methods replay cannot stand in for, refused before anything runs, with the reason."""
    for name, decoder in decoders.items():
        if not isinstance(decoder, Speculative):
            raise UserError(f"--replay: {name} decodes whole turns without trees; there is nothing to replay")
        if not decoder.lossless:
            raise UserError(f"--replay: {name} uses a lossy acceptance rule, so its tokens are not the baseline's; "
                            f"measure it with real decoding")


class Replayed(TurnDecoder):
    """A drafting method's turns replayed: its own drafter and verifier in the shared loop, the target's
    forwards answered by a ReplayTarget from the baseline's rows (``begin`` before each question)."""

    def __init__(self, decoder: Speculative, target: Target) -> None:
        self.method, self.decoder, self.target = decoder.method, decoder, ReplayTarget(target)

    @property
    def lossless(self) -> bool:
        return self.decoder.lossless

    def begin(self, baseline_row: dict) -> None:
        self.target.begin(baseline_row)

    def decode_turn(self, prompt: Tensor, *, max_new_tokens: int, stop_ids: frozenset[int],
                    sampling: SamplingParams, rng: torch.Generator) -> Generation:
        return generate(self.target, self.decoder.drafter, self.decoder.verifier, prompt,
                        max_new_tokens=max_new_tokens, stop_ids=stop_ids, sampling=sampling, rng=rng)


def baseline_rows(rows: list[dict], question_ids: list[str]) -> dict[str, dict]:
    """The baseline's (vanilla's) row of each question; refuses, naming them, when any is missing."""
    found = {str(row["question_id"]): row for row in rows}
    missing = [q for q in question_ids if q not in found]
    if missing:
        raise UserError(f"replay needs vanilla's answers for every question (same suite, questions, temperature and "
                        f"max_new_tokens); missing: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}; "
                        f"run vanilla first (it runs first in the same command unless its rows exist)")
    return {q: found[q] for q in question_ids}


def label(row: dict) -> dict:
    """A replayed row: method and model_id name the replay, and it carries no times (nothing was timed)."""
    row["method"] += SUFFIX
    row["model_id"] = row["model_id"].replace("-temperature-", f"{SUFFIX}-temperature-", 1)
    row["replayed"] = True
    turns = len(row["choices"][0]["wall_time"])
    row["choices"][0]["wall_time"] = [None] * turns
    for key in ("prefill_time", "draft_time", "verify_time"):
        if key in row:
            row[key] = [None] * turns
    return row
