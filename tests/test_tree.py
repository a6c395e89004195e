import pytest
import torch

from harness.tree import DraftTree


def test_hand_made_tree_gives_expected_mask_positions_and_paths():
    #      0
    #    1   2
    #   3 4   5
    #   6
    tree = DraftTree(torch.tensor([10, 11, 12, 13, 14, 15, 16]), torch.tensor([-1, 0, 0, 1, 1, 2, 3]))
    assert tree.depth.tolist() == [0, 1, 1, 2, 2, 2, 3]
    expected = torch.zeros(7, 7, dtype=torch.bool)
    for node, ancestors in {0: [0], 1: [0, 1], 2: [0, 2], 3: [0, 1, 3], 4: [0, 1, 4], 5: [0, 2, 5],
                            6: [0, 1, 3, 6]}.items():
        expected[node, ancestors] = True
    assert torch.equal(tree.ancestor_mask, expected)
    assert tree.children == [[1, 2], [3, 4], [5], [6], [], [], []]
    assert tree.paths.tolist() == [[0, 1, 4, -1], [0, 2, 5, -1], [0, 1, 3, 6]]  # one row per leaf, leaf id order


def test_chain_and_root_only():
    chain = DraftTree.chain(torch.tensor(5), torch.tensor([6, 7, 8]))
    assert chain.parents.tolist() == [-1, 0, 1, 2]
    assert torch.equal(chain.ancestor_mask, torch.tril(torch.ones(4, 4, dtype=torch.bool)))
    assert chain.depth.tolist() == [0, 1, 2, 3]
    assert chain.paths.tolist() == [[0, 1, 2, 3]]
    root = DraftTree.root_only(torch.tensor(9))
    assert root.size == 1 and root.paths.tolist() == [[0]]


@pytest.mark.parametrize("parents", [[0, 0], [-1, 1], [-1, 0, 3, 1]])
def test_invalid_parents_are_refused(parents):
    with pytest.raises(ValueError):
        DraftTree(torch.arange(len(parents)), torch.tensor(parents))
