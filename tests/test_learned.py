"""The learned-drafter contract (harness/learned.py), checked for every registered learned drafter: what
training writes, drafting and warm starts read back, so a new drafter that fills the contract is tested
the day it is registered."""
import pytest
import torch

from harness import checkpoint as ckpt
from harness.cli import main
from harness.drafter import METHODS
from harness.errors import UserError
from harness.learned import LearnedDrafter, learned
from tests.tiny import tiny_target

LEARNED = [name for name in METHODS.names() if issubclass(METHODS.get(name), LearnedDrafter)]


def perturbed(net: torch.nn.Module) -> torch.nn.Module:
    """Weights no constructor makes (Medusa's blocks start at zero), so a part that is not read back shows."""
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=generator))
    return net


def tiny_loss(cls) -> dict:
    """Loss options that fit the tiny target's 96-token vocabulary (CORAL's LM-head groups)."""
    return {"num_groups": 10, "always_on": 12} if "num_groups" in cls.loss_config() else {}


@pytest.mark.parametrize("sharded", [False, True], ids=["one-file", "sharded"])
@pytest.mark.parametrize("method", LEARNED)
def test_a_trained_checkpoint_is_read_back_by_drafting_and_by_a_warm_start(method, sharded, tmp_path, monkeypatch):
    if sharded:   # a draft over the per-file size is split, as a large vocabulary's draft is
        monkeypatch.setattr(ckpt, "MAX_FILE_BYTES", 2048)
    target = tiny_target("llama")
    cls = learned(method, "train")
    trained = perturbed(cls.training_setup(target, **tiny_loss(cls))[0])
    config = {"method": method, "target": target.fingerprint(), "architecture": cls.architecture(trained),
              "loss": cls.loss_config(**tiny_loss(cls))}
    ckpt.save(tmp_path / "draft", trained.state_dict(), config, dtype=torch.float32)
    assert (tmp_path / "draft" / ckpt.INDEX).is_file() == sharded != (tmp_path / "draft" / ckpt.WEIGHTS).is_file()
    drafter = cls(target, checkpoint=str(tmp_path / "draft"))
    assert drafter.draft_config["architecture"] == cls.architecture(drafter.net) == config["architecture"]
    again = cls.training_setup(target, **tiny_loss(cls))[0]
    cls.warm_start(again, target, tmp_path / "draft")
    for key, value in trained.state_dict().items():
        torch.testing.assert_close(drafter.net.state_dict()[key], value.to(drafter.net.state_dict()[key].dtype))
        torch.testing.assert_close(again.state_dict()[key], value)


def test_a_resave_leaves_no_stale_weight_files_and_a_missing_shard_is_named(tmp_path, monkeypatch):
    tensors = {f"w{i}": torch.full((32, 32), float(i)) for i in range(4)}   # 4 KiB each in fp32
    config = {"method": "eagle2", "target": {}}
    monkeypatch.setattr(ckpt, "MAX_FILE_BYTES", 5000)
    ckpt.save(tmp_path, tensors, config, dtype=torch.float32)
    shards = sorted(p.name for p in tmp_path.glob("model-*.safetensors"))
    assert len(shards) == 4 and ckpt.load(tmp_path, "eagle2", {})[0]["w3"][0, 0] == 3.0
    monkeypatch.setattr(ckpt, "MAX_FILE_BYTES", 10**6)
    ckpt.save(tmp_path, tensors, config, dtype=torch.float32)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    monkeypatch.setattr(ckpt, "MAX_FILE_BYTES", 5000)
    ckpt.save(tmp_path, tensors, config, dtype=torch.float32)
    (tmp_path / shards[2]).unlink()
    with pytest.raises(UserError, match=f"missing {shards[2]}"):
        ckpt.load(tmp_path, "eagle2", {})


@pytest.mark.parametrize("method", LEARNED)
def test_loss_options_are_checked_and_reach_the_saved_config(method):
    cls = METHODS.get(method)
    field = next(iter(cls.loss_config()))
    assert cls.loss_config(**{field: cls.loss_config()[field]}) == cls.loss_config()
    with pytest.raises(UserError, match=f"unknown loss option for {method}"):
        cls.loss_config(no_such_option=1)


def test_methods_without_a_network_are_refused_by_train_and_export(capsys, tmp_path):
    with pytest.raises(UserError, match="'pld' has no trained network to train"):
        learned("pld", "train")
    assert main(["export", "--method", "vanilla", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "x")]) == 2
    assert "'vanilla' has no trained network to export" in capsys.readouterr().err
