"""`harness train` under torchrun: 2 CPU processes (gloo) give one process's loss curve, and resume."""
import csv
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from harness.target import Target
from harness.train import trainer
from harness.train.data import FeatureData
from harness.train.datagen import save_shard, shard_tensors
from methods.eagle2 import Eagle2
from tests.tiny import save_tiny_target

REPO = Path(__file__).resolve().parents[1]
SETTINGS = dict(epochs=2, batch_size=5, lr=3e-3, warmup_steps=1, holdout=0.1, eval_depths=2)


def uneven_data(target: Target, folder: Path) -> Path:
    """12 samples of different lengths and answer spans, so the two ranks' parts hold different numbers of
    loss positions; 11 train samples at batch 5 leave a last batch of one, which rank 1 sits out."""
    generator = torch.Generator().manual_seed(7)
    rows = []
    with torch.no_grad():
        for i in range(12):
            length = 10 + 3 * i
            ids = torch.randint(2, 96, (length,), generator=generator)
            hidden = target.model.model(ids[None]).last_hidden_state[0]
            rows.append((ids, torch.arange(length) >= 2 + i % 5, hidden))
    folder.mkdir()
    save_shard(folder / "shard_00000.safetensors", shard_tensors(rows))
    manifest = {"target": target.fingerprint(), "settings": {}, "shards": [{"file": "shard_00000.safetensors"}]}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def losses(out: Path) -> list[float]:
    return [float(row["loss"]) for row in csv.DictReader(open(out / "train_log.csv"))]


def torchrun(target_dir: str, data: Path, out: Path, epochs: int) -> None:
    sets = [f"--set={k}={v}" for k, v in {**SETTINGS, "epochs": epochs}.items()]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "harness",
               "train", "--method", "eagle2", "--data", str(data), "--out", str(out), "--target", target_dir,
               "--preset", "cpu", "--loss", "noise=0", *sets]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=400,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-3000:]


def test_two_ranks_follow_the_loss_curve_of_one_process_and_resume(tmp_path):
    target_dir = save_tiny_target(tmp_path / "target")
    target = Target.load(target_dir, dtype="float32")
    data = uneven_data(target, tmp_path / "data")
    config = dataclasses.replace(trainer.PRESETS["cpu"], **SETTINGS)
    one = trainer.train(Eagle2, target, FeatureData(data, max_len=config.max_len), tmp_path / "one", config,
                        {"noise": 0.0})
    trainer.train(Eagle2, target, FeatureData(data, max_len=config.max_len), one,
                  dataclasses.replace(config, epochs=3), {"noise": 0.0})
    torchrun(target_dir, data, tmp_path / "two", epochs=2)
    assert (tmp_path / "two" / "epoch_2" / "config.json").is_file()
    torchrun(target_dir, data, tmp_path / "two", epochs=3)   # resumes after epoch 2
    single, ranks = losses(one), losses(tmp_path / "two")
    assert len(single) == len(ranks) == 9 and single[0] != single[-1]   # 3 steps per epoch, logged by rank 0
    assert max(abs(a - b) for a, b in zip(single, ranks)) < 1e-5, (single, ranks)
    evals = json.loads((tmp_path / "two" / "config.json").read_text())["training"]["evals"]
    assert [e["epoch"] for e in evals] == [1, 2, 3]
