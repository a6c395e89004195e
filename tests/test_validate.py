"""Every bad input is one line before any work, and a refused command leaves --out as it was."""
import json
from pathlib import Path

import pytest
import torch

from harness import checkpoint as ckpt
from harness import runner, validate
from harness.cli import main
from harness.records import answer_file, read_rows
from methods.eagle2 import Eagle2
from tests.tiny import tiny_target

QUESTIONS = [{"question_id": i, "category": "qa", "turns": [f"w{i} w{i + 1} w{i + 2}"]} for i in range(1, 4)]


@pytest.fixture(scope="module")
def draft_dir(tmp_path_factory):
    """A harness eagle2 checkpoint for the tiny target (untrained weights)."""
    target = tiny_target("llama")
    directory = tmp_path_factory.mktemp("draft")
    ckpt.save(directory, Eagle2.load_net(target, "random").state_dict(),
              {"method": "eagle2", "target": target.fingerprint(), "architecture": {"bias": True}}, torch.float32)
    return directory


def write_data(directory: Path, records: list[dict] | bytes) -> Path:
    path = directory / "spec_bench" / "question.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = records if isinstance(records, bytes) else "".join(json.dumps(r) + "\n" for r in records).encode()
    path.write_bytes(raw)
    return directory


def command(tiny_dir, out, data_dir, *extra):
    return ["run", "--methods", "vanilla", "--suite", "specbench", "--target", str(tiny_dir), "--out", str(out),
            "--data-dir", str(data_dir), "--max-new-tokens", "4", "--warmup", "0", "--limit", "2", *extra]


def snapshot(folder: Path) -> dict | None:
    """Every file under folder with its bytes; None when the folder does not exist."""
    if not folder.exists():
        return None
    if folder.is_file():
        return {"": folder.read_bytes()}
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def refused(argv: list[str], out: Path, capsys) -> str:
    """Run the CLI expecting exit 2 with one line on stderr and --out untouched; the line."""
    before = snapshot(out)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert snapshot(out) == before, "a refused command wrote into --out"
    return err


@pytest.fixture
def data(tmp_path):
    return write_data(tmp_path / "data", QUESTIONS)


@pytest.fixture
def no_model_load(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the target was loaded before a settings check")
    monkeypatch.setattr(runner.Target, "load", fail)


# ---- names and aliases ----------------------------------------------------------------------------

def test_aliases_in_checkpoint_and_opt_resolve_to_the_method_that_runs(draft_dir, data):
    plan = runner.Plan(methods=("eagle2",), suites=("specbench",), data_dir=data, checkpoints={"eagle": str(draft_dir)},
                       options={"eagle": {"total_tokens": 10}, "eagle-2": {"depth": 2}})
    checked = validate.before_load(plan)
    assert checked.plan.checkpoints == {"eagle2": str(draft_dir)}
    assert checked.plan.options == {"eagle2": {"total_tokens": 10, "depth": 2}}
    assert checked.methods == ["vanilla", "eagle2"]


def test_an_aliased_checkpoint_is_the_one_that_runs_and_is_recorded(tiny_dir, draft_dir, data, tmp_path):
    out = tmp_path / "run"
    assert main(command(tiny_dir, out, data, "--methods", "eagle2", "--checkpoint", f"eagle={draft_dir}",
                        "--limit", "1")) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["settings"]["checkpoints"] == {"eagle2": str(draft_dir)}
    assert [c["checkpoint"] for c in manifest["cells"] if c["method"] == "eagle2"] == [str(draft_dir)]


@pytest.mark.parametrize("extra,message", [
    (["--checkpoint", "eagle2=random"], "not among --methods"),
    (["--methods", "pld", "--checkpoint", "pld=random"], "takes no checkpoint"),
    (["--methods", "eagle2", "--checkpoint", "eagle=random", "--checkpoint", "eagle2=/x"], "two checkpoints"),
    (["--opt", "eagle.depth=2"], "not among --methods"),
    (["--methods", "eagle2", "--opt", "eagle.depth=2", "--opt", "eagle2.depth=3"], "given twice"),
])
def test_checkpoints_and_options_must_name_a_method_of_the_run(extra, message, tiny_dir, data, tmp_path, capsys,
                                                               no_model_load):
    assert message in refused(command(tiny_dir, tmp_path / "run", data, *extra), tmp_path / "run", capsys)


# ---- checkpoints: found before the first cell, and the corrected command still runs ---------------

def broken_copy(draft_dir: Path, into: Path, damage: str) -> Path:
    into.mkdir()
    for name in ("config.json", "model.safetensors"):
        (into / name).write_bytes((draft_dir / name).read_bytes())
    if damage == "truncated":
        weights = (into / "model.safetensors").read_bytes()
        (into / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    elif damage == "config":
        (into / "config.json").write_text('{"method": "eagle2", "target": {')
    elif damage == "method":
        config = json.loads((into / "config.json").read_text())
        (into / "config.json").write_text(json.dumps({**config, "method": "medusa"}))
    return into


@pytest.mark.parametrize("damage,message", [
    ("missing", "no such folder"),
    ("truncated", "damaged or truncated"),
    ("config", "not readable JSON"),
    ("method", "is a 'medusa' checkpoint, not 'eagle2'"),
])
def test_a_bad_checkpoint_is_one_line_and_the_corrected_command_runs_into_the_same_out(
        damage, message, tiny_dir, draft_dir, data, tmp_path, capsys, monkeypatch):
    bad = tmp_path / "bad" if damage == "missing" else broken_copy(draft_dir, tmp_path / "bad", damage)
    cells = []
    monkeypatch.setattr(runner, "_run_cell", lambda *args: cells.append(args[4].method.name))
    out = tmp_path / "run"
    argv = command(tiny_dir, out, data, "--methods", "eagle2", "--checkpoint")
    err = refused(argv + [f"eagle2={bad}"], out, capsys)
    assert message in err and str(bad) in err
    assert cells == [], "vanilla's cell ran before the checkpoint was checked"
    assert main(argv + [f"eagle2={draft_dir}"]) == 0
    assert cells == ["vanilla", "eagle2"]


# ---- settings, device, output folder, context -------------------------------------------------------

@pytest.mark.parametrize("extra,message", [
    (["--temperature", "nan"], "--temperature nan"),
    (["--temperature", "inf"], "--temperature inf"),
    (["--temperature", "0,-1"], "--temperature -1"),
    (["--top-p", "0"], "--top-p 0"),
    (["--top-p", "1.5"], "--top-p 1.5"),
    (["--top-p", "nan"], "--top-p nan"),
    (["--top-k", "-1"], "--top-k -1"),
    (["--warmup", "-3"], "--warmup -3"),
    (["--max-new-tokens", "0"], "--max-new-tokens 0"),
    (["--max-len", "0"], "--max-len 0"),
])
def test_bad_sampling_settings_are_refused_before_the_model_loads(extra, message, tiny_dir, data, tmp_path, capsys,
                                                                  no_model_load):
    assert message in refused(command(tiny_dir, tmp_path / "run", data, *extra), tmp_path / "run", capsys)


def test_cuda_without_a_gpu_is_one_line(tiny_dir, data, tmp_path, capsys, monkeypatch, no_model_load):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    err = refused(command(tiny_dir, tmp_path / "run", data, "--device", "cuda"), tmp_path / "run", capsys)
    assert "--device cuda" in err and "--device cpu" in err


def test_out_pointing_at_a_file_is_one_line(tiny_dir, data, tmp_path, capsys, no_model_load):
    out = tmp_path / "notes.txt"
    out.write_text("my notes")
    assert "is a file" in refused(command(tiny_dir, out, data), out, capsys)


def test_a_truncated_manifest_is_one_line_that_says_to_move_it(tiny_dir, data, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(command(tiny_dir, out, data, "--limit", "1")) == 0
    capsys.readouterr()
    manifest = (out / "manifest.json").read_text()
    (out / "manifest.json").write_text(manifest[: len(manifest) // 2])
    err = refused(command(tiny_dir, out, data), out, capsys)
    assert "manifest.json is damaged" in err and "move it" in err


def test_max_len_above_the_models_context_is_one_line(tiny_dir, data, tmp_path, capsys):
    err = refused(command(tiny_dir, tmp_path / "run", data, "--max-len", "100000"), tmp_path / "run", capsys)
    assert "--max-len 100000 is above the context" in err and "512" in err


def test_a_text_file_renamed_gguf_is_one_line(data, tmp_path, capsys):
    fake = tmp_path / "model.gguf"
    fake.write_text("this is not a model\n")
    err = refused(command(fake, tmp_path / "run", data), tmp_path / "run", capsys)
    assert f"{fake} is not a GGUF file" in err


# ---- data files -----------------------------------------------------------------------------------

@pytest.mark.parametrize("records,message", [
    (b'{"question_id": 1, "category": "qa", "turns": ["w1"]}\n{"question_id": 2, "category": "qa", '
     b'"turns": ["caf\xe9"]}\n', "question.jsonl:2: not UTF-8"),
    (QUESTIONS + [QUESTIONS[0]], "question id '1' appears 2 times"),
    ([{**QUESTIONS[0], "turns": []}], "question '1' has no turns"),
    ([{**QUESTIONS[0], "turns": ["w1", " "]}], "an empty one"),
])
def test_bad_data_files_are_one_line_naming_the_file(records, message, tiny_dir, tmp_path, capsys, no_model_load):
    data = write_data(tmp_path / "data", records)
    err = refused(command(tiny_dir, tmp_path / "run", data), tmp_path / "run", capsys)
    assert message in err and str(data / "spec_bench" / "question.jsonl") in err


def test_a_changed_question_text_under_a_known_id_is_refused(tiny_dir, data, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(command(tiny_dir, out, data)) == 0
    capsys.readouterr()
    assert [r["question_hash"] for r in read_rows(answer_file(out, "specbench", "vanilla", 0.0))][0]
    changed = [{**QUESTIONS[0], "turns": ["w9 w9 w9"]}] + QUESTIONS[1:]
    write_data(data, changed)
    err = refused(command(tiny_dir, out, data), out, capsys)
    assert "question 1 were made for a different text" in err and "vanilla-temperature-0.jsonl" in err
    write_data(data, QUESTIONS)
    assert main(command(tiny_dir, out, data, "--limit", "3")) == 0   # the same text resumes
