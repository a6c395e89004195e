"""The verifier: crafted greedy cases, and chi-square tests that sampling keeps the target distribution."""

import pytest
import torch

from harness.sampling import SamplingParams, sample, to_probs
from harness.tree import DraftTree
from harness.verify import Verifier

V = 5


def logits_with_argmax(rows: list[int]) -> torch.Tensor:
    logits = torch.zeros(len(rows), V)
    logits[torch.arange(len(rows)), torch.tensor(rows)] = 5.0
    return logits


def test_greedy_perfect_match_takes_the_whole_chain_and_the_bonus():
    tree = DraftTree.chain(torch.tensor(0), torch.tensor([1, 2, 3]))
    verdict = Verifier().verify(tree, logits_with_argmax([1, 2, 3, 4]), SamplingParams(), torch.Generator())
    assert verdict.path.tolist() == [0, 1, 2, 3] and verdict.accepted == 3 and verdict.bonus == 4


def test_greedy_early_mismatch_stops_and_takes_the_target_token():
    tree = DraftTree.chain(torch.tensor(0), torch.tensor([1, 2, 3]))
    verdict = Verifier().verify(tree, logits_with_argmax([1, 4, 3, 4]), SamplingParams(), torch.Generator())
    assert verdict.path.tolist() == [0, 1] and verdict.accepted == 1 and verdict.bonus == 4


def test_greedy_picks_the_deepest_branch_and_root_only_gives_one_token():
    # root 0 -> {1: node1, 2: node2}; node1 -> 3 (node3); node2 -> 4 (node4) -> 1 (node5)
    tree = DraftTree(torch.tensor([0, 1, 2, 3, 4, 1]), torch.tensor([-1, 0, 0, 1, 2, 4]))
    logits = logits_with_argmax([2, 3, 4, 0, 1, 3])     # target: 0 -> 2 -> 4 -> 1 -> 3
    verdict = Verifier().verify(tree, logits, SamplingParams(), torch.Generator())
    assert verdict.path.tolist() == [0, 2, 4, 5] and verdict.bonus == 3
    root = Verifier().verify(DraftTree.root_only(torch.tensor(0)), logits[:1], SamplingParams(), torch.Generator())
    assert root.accepted == 0 and root.bonus == 2


def test_top_p_and_top_k_keep_the_right_tokens():
    probs = to_probs(torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05])), SamplingParams(1.0, top_p=0.8))
    assert torch.allclose(probs, torch.tensor([0.625, 0.375, 0.0, 0.0]))
    probs = to_probs(torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05])), SamplingParams(1.0, top_k=3))
    assert torch.allclose(probs, torch.tensor([0.5, 0.3, 0.15, 0.0]) / 0.95)


# ---- distribution tests -------------------------------------------------------------------------

class TableModel:
    """A synthetic next-token model over V tokens: fixed random logits for every prefix."""

    def __init__(self, seed: int, sharpness: float = 2.0) -> None:
        self.seed, self.sharpness, self.table = seed, sharpness, {}

    def logits(self, prefix: tuple[int, ...]) -> torch.Tensor:
        if prefix not in self.table:
            g = torch.Generator().manual_seed(hash((self.seed, prefix)) % (2**31))
            self.table[prefix] = self.sharpness * torch.randn(V, generator=g)
        return self.table[prefix]


def draft_tree(target: TableModel, drafter: TableModel | None, params: SamplingParams, rng, shape=(3, 2, 1)):
    """A tree whose level d has shape[d] children per node. Deterministic (drafter None): fixed top
    tokens of the target's own ranking perturbed; sampled: drawn without replacement from the drafter."""
    tokens, parents, qs, prefixes = [0], [-1], [torch.zeros(V)], [(0,)]
    frontier = [0]
    for width in shape:
        new_frontier = []
        for node in frontier:
            if drafter is None:
                # deliberately imperfect, with a duplicate sibling: lossless must not depend on draft quality
                choice = [(prefixes[node][-1] + j) % V for j in range(width)] + [prefixes[node][-1] % V]
                q_rows = [None] * len(choice)
            else:
                q = to_probs(drafter.logits(prefixes[node]), params)
                choice, q_rows = [], []
                for _ in range(min(width, int((q > 0).sum()))):
                    q_rows.append(q.clone())
                    token = sample(q, rng)
                    choice.append(token)
                    q = q.clone()
                    q[token] = 0
                    q = q / q.sum()
            for token, q_row in zip(choice, q_rows):
                tokens.append(token)
                parents.append(node)
                qs.append(q_row if q_row is not None else torch.zeros(V))
                prefixes.append(prefixes[node] + (token,))
                new_frontier.append(len(tokens) - 1)
        frontier = new_frontier
    q = torch.stack(qs) if drafter is not None else None
    return DraftTree(torch.tensor(tokens), torch.tensor(parents), q), prefixes


def chi_square_p(counts: torch.Tensor, expected_probs: torch.Tensor) -> float:
    n = counts.sum()
    keep = expected_probs > 0
    assert counts[~keep].sum() == 0, "a token the target cannot produce was emitted"
    expected = expected_probs[keep] * n
    stat = ((counts[keep] - expected) ** 2 / expected).sum()
    dof = keep.sum() - 1
    return float(torch.special.gammaincc(dof / 2.0, stat / 2.0))


def exact_joint(target: TableModel, params: SamplingParams) -> torch.Tensor:
    first = to_probs(target.logits((0,)), params)
    return torch.stack([first[a] * to_probs(target.logits((0, a)), params) for a in range(V)]).flatten()


def sample_two_tokens(target, drafter, params, trials, seed):
    rng = torch.Generator().manual_seed(seed)
    counts = torch.zeros(V * V)
    verifier = Verifier()
    fixed = None
    if drafter is None:   # a deterministic tree draws nothing from rng, so every trial's tree is this one
        tree, prefixes = draft_tree(target, None, params, rng)
        fixed = tree, torch.stack([target.logits(p) for p in prefixes])
    for _ in range(trials):
        if fixed is not None:
            tree, logits = fixed
        else:
            tree, prefixes = draft_tree(target, drafter, params, rng)
            logits = torch.stack([target.logits(p) for p in prefixes])
        verdict = verifier.verify(tree, logits, params, rng)
        emitted = tree.tokens[verdict.path[1:]].tolist() + [verdict.bonus]
        while len(emitted) < 2:  # finish with plain sampling: the combined process must be the target's
            emitted.append(sample(to_probs(target.logits((0, *emitted)), params), rng))
        counts[emitted[0] * V + emitted[1]] += 1
    return counts


CASES = [
    ("deterministic", SamplingParams(1.0)),
    ("deterministic", SamplingParams(0.5)),
    ("deterministic", SamplingParams(0.7, top_p=0.9)),
    ("sampled", SamplingParams(0.5)),
    ("sampled", SamplingParams(1.0, top_p=0.9, top_k=4)),
]


@pytest.mark.parametrize("drafts,params", CASES, ids=[f"{d}-T{p.temperature}-p{p.top_p}-k{p.top_k}" for d, p in CASES])
def test_sampling_preserves_the_target_distribution(drafts, params):
    target = TableModel(seed=1)
    drafter = TableModel(seed=2, sharpness=1.5) if drafts == "sampled" else None
    counts = sample_two_tokens(target, drafter, params, trials=6000, seed=3)
    assert chi_square_p(counts, exact_joint(target, params)) > 1e-3


def test_the_distribution_test_detects_a_wrong_temperature():
    """Negative control: the same statistic rejects samples drawn at T=1 against the T=0.5 target."""
    target = TableModel(seed=1)
    counts = sample_two_tokens(target, None, SamplingParams(1.0), trials=6000, seed=3)
    assert chi_square_p(counts, exact_joint(target, SamplingParams(0.5))) < 1e-6


def test_sampling_at_a_leaf_uses_the_processed_bonus_distribution():
    """The EAGLE-2-era bug drew this bonus from the raw softmax; at T=0.25 that is visibly wrong."""
    params = SamplingParams(0.25)
    tree = DraftTree.chain(torch.tensor(0), torch.tensor([1]))
    logits = torch.tensor([[-9.0, 9.0, -9.0, -9.0, -9.0], [1.0, 0.5, 0.0, -0.5, -1.0]])
    rng = torch.Generator().manual_seed(0)
    bonuses = torch.tensor([Verifier().verify(tree, logits, params, rng).bonus for _ in range(4000)])
    counts = torch.bincount(bonuses, minlength=V).float()
    assert chi_square_p(counts, to_probs(logits[1], params)) > 1e-3
