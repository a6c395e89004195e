"""Sweeps on Ray workers (harness/cluster.py): Ray started here with 2 workers x 1 CPU, tiny targets."""
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from harness import runner
from harness.cli import main
from harness.records import answer_file, iter_result_files, read_rows, scan_rows
from harness.report import build
from harness.suite import SUITES, Question, Suite
from tests.tiny import save_tiny_target


@SUITES.register("tiny-many")
class TinyMany(Suite):
    """Sixteen made-up questions over the tiny tokenizer's words (tests only)."""

    def questions(self):
        return [Question(id=str(i), category=f"c{i % 3}", turns=(f"w{i} w{i + 3} w{i} w{i + 7} w{i}",))
                for i in range(16)]


@pytest.fixture(scope="module")
def local_ray():
    from harness.cluster import runtime_env

    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, runtime_env=runtime_env(), log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny_target(tmp_path_factory.mktemp("target"))


def raw_rows(run_dir):
    """Every line of every answer file (duplicates included): (file name, question id)."""
    return [(path.name, json.loads(line)["question_id"]) for path in iter_result_files([run_dir])
            for line in path.read_text().splitlines()]


def test_two_workers_write_the_texts_and_accept_lengths_of_one_process(local_ray, tiny_dir, shared_data, tmp_path):
    plan = dict(methods=("vanilla", "pld"), suites=("specbench",), target=tiny_dir, max_new_tokens=16, limit=1,
                per_task=True, warmup=0, data_dir=shared_data)
    alone = runner.run(runner.Plan(**plan, out=tmp_path / "one"), argv=["one"])
    spread = runner.run(runner.Plan(**plan, out=tmp_path / "two", workers=2), argv=["two"])
    for method in ("vanilla", "pld"):
        one = {r["question_id"]: r for r in read_rows(answer_file(alone, "specbench", method, 0.0))}
        two = {r["question_id"]: r for r in read_rows(answer_file(spread, "specbench", method, 0.0))}
        assert len(one) == 6 and one.keys() == two.keys()
        assert sum(not r.get("skipped") for r in one.values()) >= 4, "most prompts fit the tiny target"
        for qid in one:
            assert two[qid]["choices"][0]["turns"] == one[qid]["choices"][0]["turns"]
            assert two[qid]["choices"][0]["accept_lengths"] == one[qid]["choices"][0]["accept_lengths"]
            assert two[qid].get("skipped") == one[qid].get("skipped")
    rows = raw_rows(spread)
    assert len(rows) == len(set(rows)) == 12, "every question exactly once per method"
    workers = {json.dumps(r["worker"], sort_keys=True) for path in iter_result_files([spread])
               for r in read_rows(path)}
    assert all('"device_type": "cpu' in w and "(1 threads)" in w for w in workers)
    manifest = json.loads((spread / "manifest.json").read_text())
    assert manifest["sweeps"][-1]["status"] == "complete" and len(manifest["sweeps"][-1]["workers"]) == 2
    cell_load = {c["method"]: c for c in manifest["sweeps"][-1]["cell_load"]}   # per cell, from its rows
    assert cell_load.keys() == {"vanilla", "pld"} and all(c["from_rows"] == 6 for c in cell_load.values())
    assert (build([spread], out=tmp_path / "report") / "report.md").is_file()


@pytest.mark.parametrize("omp, threads", [(None, 2), ("1", 1), ("8", 2)])
def test_a_worker_takes_its_cpu_share_capped_by_the_drivers_omp_threads(local_ray, tiny_dir, monkeypatch, tmp_path,
                                                                       omp, threads):
    # Two runs side by side each start a Ray that sees every core: OMP_NUM_THREADS is how the user splits them.
    if omp is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", omp)
    run = runner.run(runner.Plan(methods=("pld",), suites=("tiny-many",), target=tiny_dir, max_new_tokens=4, limit=1,
                                 warmup=0, out=tmp_path / "run", workers=1), argv=["run"])
    (row,) = read_rows(answer_file(run, "tiny-many", "pld", 0.0))
    assert f"({threads} threads)" in json.dumps(row["worker"])


def test_on_a_cluster_the_drivers_omp_threads_leave_the_workers_share_alone(monkeypatch):
    from harness.cluster import worker_threads

    monkeypatch.setenv("OMP_NUM_THREADS", "1")   # the driver's shell says nothing about the cluster's machines
    assert worker_threads(16, local=False) == 16 and worker_threads(16, local=True) == 1


def test_a_killed_worker_loses_nothing_and_a_rerun_adds_nothing(local_ray, tiny_dir, tmp_path):
    plan = runner.Plan(methods=("vanilla", "pld"), suites=("tiny-many",), target=tiny_dir, max_new_tokens=64,
                       warmup=0, out=tmp_path / "run", workers=2)
    finished: dict = {}
    sweep = threading.Thread(target=lambda: finished.setdefault("dir", runner.run(plan, argv=["killed"])))
    sweep.start()
    path = answer_file(tmp_path / "run", "tiny-many", "vanilla", 0.0)
    killed = None
    deadline = time.time() + 600   # Ray's workers start slowly when other jobs share the 2 cores
    while killed is None and time.time() < deadline and sweep.is_alive():
        if path.is_file() and path.read_text().strip():
            killed = json.loads(path.read_text().splitlines()[0])["worker"]["pid"]
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.02)
    sweep.join(timeout=600)
    assert killed is not None and "dir" in finished
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["sweeps"][-1]["status"] == "complete" and manifest["sweeps"][-1]["worker_deaths"] == 1
    rows = raw_rows(tmp_path / "run")
    assert len(rows) == len(set(rows)) == 32, "16 questions x 2 methods, none lost, none twice"
    assert all(scan_rows(p).duplicates == 0 for p in iter_result_files([tmp_path / "run"]))
    pids = {r["worker"]["pid"] for p in iter_result_files([tmp_path / "run"]) for r in read_rows(p)}
    assert len(pids) >= 2 and killed in pids   # the killed worker's finished rows stay; others did the rest

    before = (tmp_path / "run" / "answers" / "tiny-many" / "pld-temperature-0.jsonl").read_bytes()
    runner.run(plan, argv=["again"])
    assert (tmp_path / "run" / "answers" / "tiny-many" / "pld-temperature-0.jsonl").read_bytes() == before
    assert len(raw_rows(tmp_path / "run")) == 32


def test_two_workers_replay_the_accept_lengths_of_one_process(local_ray, tiny_dir, tmp_path):
    plan = dict(methods=("vanilla", "pld"), suites=("tiny-many",), target=tiny_dir, max_new_tokens=24, warmup=0,
                limit=6)
    alone = runner.run(runner.Plan(**plan, out=tmp_path / "one", replay=True), argv=["one"])
    half = runner.run(runner.Plan(**{**plan, "limit": 3}, out=tmp_path / "two"), argv=["vanilla first"])
    spread = runner.run(runner.Plan(**plan, out=half, replay=True, workers=2), argv=["two"])
    for method in ("vanilla", "pld-replay"):
        one = {r["question_id"]: r for r in read_rows(answer_file(alone, "tiny-many", method, 0.0))}
        two = {r["question_id"]: r for r in read_rows(answer_file(spread, "tiny-many", method, 0.0))}
        assert len(one) == 6 and one.keys() == two.keys()
        for qid in one:
            assert two[qid]["token_ids"] == one[qid]["token_ids"]
            assert two[qid]["choices"][0]["accept_lengths"] == one[qid]["choices"][0]["accept_lengths"]
    replayed = read_rows(answer_file(spread, "tiny-many", "pld-replay", 0.0))
    assert all(r["replayed"] and r["choices"][0]["wall_time"] == [None] for r in replayed)
    assert len({r["worker"]["pid"] for r in replayed}) == 2, "both workers replayed"
    manifest = json.loads((spread / "manifest.json").read_text())
    assert manifest["sweeps"][-1]["replayed"] is True and manifest["sweeps"][-1]["status"] == "complete"
    assert {c["method"]: c.get("replayed", False) for c in manifest["cells"]} == {"vanilla": False, "pld": False,
                                                                                  "pld-replay": True}


def test_without_ray_workers_say_how_to_install_it(monkeypatch, capsys, tiny_dir, tmp_path):
    import builtins

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    code = main(["run", "--methods", "pld", "--suite", "tiny-many", "--target", tiny_dir, "--workers", "2",
                 "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == ["error: --workers needs Ray: pip install -e '.[cluster]' (or pip install "
                                 "'ray==2.60.0')"]


def test_without_workers_ray_is_never_imported(tiny_dir, shared_data, tmp_path):
    code = (f"import sys; from harness import runner; "
            f"runner.run(runner.Plan(methods=('pld',), suites=('specbench',), target={tiny_dir!r}, limit=1, "
            f"max_new_tokens=4, warmup=0, out=__import__('pathlib').Path({str(tmp_path / 'run')!r}), "
            f"data_dir=__import__('pathlib').Path({str(shared_data)!r})), argv=[]); "
            f"assert 'ray' not in sys.modules, 'ray was imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          cwd=os.path.dirname(os.path.dirname(__file__)))
    assert done.returncode == 0, done.stderr[-2000:]


def test_datagen_on_two_workers_writes_the_token_ids_of_one_process(local_ray, tiny_dir, training_data, tmp_path):
    from safetensors.torch import load_file

    from harness.train import datagen

    config = dict(target=tiny_dir, sources=("gsm8k",), max_samples=10, max_new_tokens=8, batch_size=2,
                  shard_size=4, data_dir=training_data)
    alone = datagen.run(datagen.DatagenConfig(**config, out=tmp_path / "one"))
    spread = datagen.run(datagen.DatagenConfig(**config, out=tmp_path / "two"), workers=2)
    one, two = (json.loads((d / "manifest.json").read_text()) for d in (alone, spread))
    assert [s["file"] for s in two["shards"]] == [s["file"] for s in one["shards"]] == \
        [f"shard_{i:05d}.safetensors" for i in range(3)]
    assert one["target"] == two["target"] and one["settings"] == two["settings"]
    for shard in one["shards"]:
        a, b = load_file(str(alone / shard["file"])), load_file(str(spread / shard["file"]))
        for key in ("input_ids", "loss_mask", "offsets"):
            assert a[key].equal(b[key]), key
        assert (a["hidden"].float() - b["hidden"].float()).abs().max() < 2e-2   # bf16 features, other threads

    # A lost shard (deleted, and gone from the manifest) is made again on resume; the rest are kept.
    kept = (spread / "shard_00000.safetensors").stat().st_mtime_ns
    (spread / "shard_00001.safetensors").unlink()
    two["shards"] = [s for s in two["shards"] if s["file"] != "shard_00001.safetensors"]
    (spread / "manifest.json").write_text(json.dumps(two))
    datagen.run(datagen.DatagenConfig(**config, out=tmp_path / "two"), workers=1)
    again = json.loads((spread / "manifest.json").read_text())
    assert [s["file"] for s in again["shards"]] == [s["file"] for s in one["shards"]]
    assert (spread / "shard_00000.safetensors").stat().st_mtime_ns == kept
    assert load_file(str(spread / "shard_00001.safetensors"))["input_ids"].equal(
        load_file(str(alone / "shard_00001.safetensors"))["input_ids"])
