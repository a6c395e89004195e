"""The runner end to end on a tiny target folder: rows, manifest, resume, and clear errors."""
import dataclasses
import json

import pytest
import torch

from harness import decode, runner
from harness.cli import main
from harness.drafter import METHODS
from harness.errors import UserError
from harness.records import answer_file, read_rows
from harness.report import build
from harness.sampling import SamplingParams
from harness.suite import SUITES, Question, Suite
from harness.verify import Verifier
from tests.tiny import tiny_plan, tiny_target


@SUITES.register("tiny-words")
class TinyWords(Suite):
    """Five made-up questions over the tiny tokenizer's words (tests only)."""

    def questions(self):
        return [Question(id=str(i), category="words", turns=(f"w{i} w{i + 1} w{i} w{i + 1}",) * (1 + i % 2))
                for i in range(5)]


def plan(tiny_dir, out, **kw):
    return tiny_plan(tiny_dir, out, "tiny-words", **{"max_new_tokens": 24, **kw})


def test_run_writes_specbench_rows_and_a_manifest(tiny_dir, tmp_path):
    run_dir = runner.run(plan(tiny_dir, tmp_path / "run"), argv=["test"])
    rows = read_rows(answer_file(run_dir, "tiny-words", "pld", 0.0))
    assert [r["question_id"] for r in rows] == [0, 1, 2, 3, 4]
    choice = rows[1]["choices"][0]
    assert set(choice) >= {"index", "turns", "decoding_steps", "new_tokens", "wall_time", "accept_lengths"}
    assert len(choice["turns"]) == len(choice["new_tokens"]) == len(choice["wall_time"]) == 2
    assert sum(choice["accept_lengths"]) == sum(choice["new_tokens"])
    assert len(choice["accept_lengths"]) == sum(choice["decoding_steps"])
    vanilla = read_rows(answer_file(run_dir, "tiny-words", "vanilla", 0.0))
    assert [r["token_ids"] for r in vanilla] == [r["token_ids"] for r in rows]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["settings"]["max_new_tokens"] == 24 and manifest["estimators"]["tau"].startswith("pooled")
    assert manifest["sweeps"][-1]["status"] == "complete" and manifest["sweeps"][-1]["env"]["torch"]
    assert {c["method"] for c in manifest["cells"]} == {"vanilla", "pld"}
    assert manifest["baseline"] == "vanilla"
    load = rows[0]["load"]                         # how busy the machine was while the row was timed
    assert set(load) == {"loadavg_before", "loadavg_after", "other_busy_cores", "cores", "contended"}
    assert {(c["method"], c["suite"]) for c in manifest["sweeps"][-1]["cell_load"]} == {("vanilla", "tiny-words"),
                                                                                        ("pld", "tiny-words")}


def test_an_interrupted_run_resumes_without_repeating_or_losing_a_question(tiny_dir, tmp_path, monkeypatch):
    real, calls = decode.generate, {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(decode, "generate", flaky)
    with pytest.raises(KeyboardInterrupt):
        runner.run(plan(tiny_dir, tmp_path / "run", methods=("vanilla",)), argv=["first"])
    path = answer_file(tmp_path / "run", "tiny-words", "vanilla", 0.0)
    first = read_rows(path)
    assert [r["question_id"] for r in first] == [0, 1]   # question 1 has two turns: calls 1-3
    with open(path, "a") as handle:                        # a kill in the middle of a write
        handle.write('{"question_id": 2, "choi')
    monkeypatch.setattr(decode, "generate", real)
    runner.run(plan(tiny_dir, tmp_path / "run", methods=("vanilla",)), argv=["second"])
    rows = read_rows(path)
    assert [r["question_id"] for r in rows] == [0, 1, 2, 3, 4]
    assert [r["answer_id"] for r in rows[:2]] == [r["answer_id"] for r in first]


def test_other_settings_in_the_same_run_dir_are_refused(tiny_dir, tmp_path):
    runner.run(plan(tiny_dir, tmp_path / "run", methods=("vanilla",), limit=1), argv=["a"])
    with pytest.raises(UserError, match="max_new_tokens"):
        runner.run(plan(tiny_dir, tmp_path / "run", methods=("vanilla",), limit=1, max_new_tokens=8), argv=["b"])


def test_a_folder_takes_new_methods_but_refuses_a_method_with_other_options(tiny_dir, tmp_path):
    run_dir = tmp_path / "run"
    runner.run(plan(tiny_dir, run_dir, methods=("vanilla",), limit=1), argv=["a"])
    runner.run(plan(tiny_dir, run_dir, methods=("pld",), limit=1, options={"pld": {"num_draft": 4}}), argv=["b"])
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["settings"]["options"] == {"pld": {"num_draft": 4}}
    assert {c["method"] for c in manifest["cells"]} == {"vanilla", "pld"} and len(manifest["sweeps"]) == 2
    with pytest.raises(UserError, match=r"pld on tiny-words at T=0 .*options"):
        runner.run(plan(tiny_dir, run_dir, methods=("pld",), limit=2), argv=["c"])
    assert len(json.loads((run_dir / "manifest.json").read_text())["sweeps"]) == 2   # refused before writing
    assert len(read_rows(answer_file(run_dir, "tiny-words", "pld", 0.0))) == 1


@pytest.mark.parametrize("argv,message", [
    (["run", "--methods", "eagel2"], "unknown method 'eagel2'"),
    (["run", "--methods", "pld", "--suite", "nosuch"], "unknown suite 'nosuch'"),
    (["run", "--methods", "pld", "--suite", "tiny-words", "--target", "/no/such/model.gguf"], "does not exist"),
    (["run", "--methods", "pld", "--suite", "tiny-words", "--target", "no-such-org/no-such-model"], "unknown target"),
    (["run", "--methods", "pld", "--opt", "pld.nonsense=3", "--suite", "tiny-words"], "has no option nonsense"),
])
def test_user_errors_are_one_line_without_traceback(argv, message, capsys, tiny_dir, tmp_path):
    if "--opt" in argv:
        argv = argv + ["--target", tiny_dir, "--out", str(tmp_path / "x")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err.strip().splitlines()[-1] and "Traceback" not in err


def test_cli_run_prints_a_summary_with_tau_and_speedup(tiny_dir, tmp_path, capsys):
    assert main(["run", "--methods", "pld", "--suite", "tiny-words", "--target", tiny_dir, "--max-new-tokens", "16",
                 "--out", str(tmp_path / "cli"), "--warmup", "0", "--limit", "2"]) == 0
    out = capsys.readouterr().out
    assert "tau_pooled" in out and "speedup" in out and "pld" in out and "vanilla" in out
    assert "paired, method - reference" in out and "d_tau" in out


def test_a_transformers_generate_row_and_fixed_shape_forwards_keep_vanilla_text(tiny_dir, tmp_path):
    run_dir = runner.run(plan(tiny_dir, tmp_path / "run", methods=("hf-generate", "pld"), compile="static",
                              compile_bucket=16, warmup=1), argv=["test"])
    texts = {method: [r["token_ids"] for r in read_rows(answer_file(run_dir, "tiny-words", method, 0.0))]
             for method in ("vanilla", "hf-generate", "pld")}
    assert texts["hf-generate"] == texts["vanilla"] == texts["pld"]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["settings"]["compile"] == "static" and manifest["settings"]["compile_bucket"] == 16


def test_bad_compile_mode_and_generate_cache_are_refused(tiny_dir, tmp_path, capsys):
    assert main(["run", "--methods", "hf-generate", "--suite", "tiny-words", "--target", tiny_dir,
                 "--opt", "hf-generate.cache=paged", "--out", str(tmp_path / "x")]) == 2
    assert "hf-generate.cache must be one of" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["run", "--methods", "pld", "--compile", "fastest"])


def test_a_run_recorded_before_a_setting_existed_still_resumes(tiny_dir, tmp_path):
    run_dir = runner.run(plan(tiny_dir, tmp_path / "run", methods=("vanilla",), limit=1), argv=["a"])
    manifest = json.loads((run_dir / "manifest.json").read_text())
    for key in ("compile", "compile_bucket"):
        del manifest["settings"][key]
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    runner.run(plan(tiny_dir, tmp_path / "run", methods=("vanilla",), limit=2), argv=["b"])
    assert len(read_rows(answer_file(run_dir, "tiny-words", "vanilla", 0.0))) == 2
    with pytest.raises(UserError, match="compile"):
        runner.run(plan(tiny_dir, tmp_path / "run", methods=("vanilla",), limit=2, compile="static"), argv=["c"])


def test_per_task_limits_take_the_first_questions_of_every_task(shared_data):
    questions = SUITES.get("specbench")(data_dir=shared_data).questions()
    kept = runner._first(questions, 2, per_task=True)
    tasks = [q.task or q.category for q in kept]
    assert len(set(tasks)) == 6 and all(tasks.count(t) == 2 for t in set(tasks))
    assert [q.id for q in kept] == [q.id for q in questions if q in kept], "file order is kept"
    assert runner._first(questions, 2, per_task=False) == questions[:2]


def test_per_task_limits_span_mtbench_categories(shared_data):
    """MT-bench is one task; its subset spans the eight categories instead of the first one only."""
    questions = SUITES.get("mtbench")(data_dir=shared_data).questions()
    kept = runner._first(questions, 1, per_task=True)
    assert len(kept) == 8 and len({q.category for q in kept}) == 8


def test_hf_generate_samples_at_temperature_one(tiny_dir, tmp_path):
    run_dir = runner.run(plan(tiny_dir, tmp_path / "run", methods=("hf-generate",), temperatures=(1.0,), limit=2),
                         argv=["t"])
    rows = read_rows(answer_file(run_dir, "tiny-words", "hf-generate", 1.0))
    choice = rows[0]["choices"][0]
    assert len(rows) == 2 and sum(choice["new_tokens"]) > 0
    assert set(choice["accept_lengths"]) == {1}, "one token per target forward"


@pytest.mark.parametrize("method", ["hf-generate", "vanilla"])
def test_a_prompt_that_fills_the_context_is_refused_alike_by_the_loop_and_a_whole_turn_row(method):
    """The runner turns PromptTooLong into a skipped row, whichever turn decoder a method has."""
    decoder = METHODS.get(method)(tiny_target("llama", max_len=16)).turn_decoder()
    with pytest.raises(decode.PromptTooLong, match="does not fit max_len 16"):
        decoder.decode_turn(torch.full((16,), 5), max_new_tokens=4, stop_ids=frozenset({1}), sampling=SamplingParams(),
                            rng=torch.Generator())


class SecondChoiceVerifier(Verifier):
    """A broken acceptance rule in a method still labelled lossless: the bonus is the target's second choice."""

    def verify(self, tree, logits, sampling, rng):
        verdict = super().verify(tree, logits, sampling, rng)
        return dataclasses.replace(verdict, bonus=int(logits[int(verdict.path[-1])].topk(2).indices[1]))


def test_a_lossless_labelled_method_that_loses_vanilla_text_fails_the_run_and_the_report(tiny_dir, tmp_path,
                                                                                       monkeypatch, capsys):
    broken = type("BrokenLookup", (METHODS.get("pld"),), {"verifier": lambda self: SecondChoiceVerifier()})
    monkeypatch.setitem(METHODS._classes, "broken-tests", broken)
    monkeypatch.setitem(METHODS._aliases, "broken-tests", "broken-tests")
    broken.name = "broken-tests"
    out = tmp_path / "cli"
    code = main(["run", "--methods", "broken-tests", "--suite", "tiny-words", "--target", tiny_dir,
                 "--max-new-tokens", "8", "--out", str(out), "--warmup", "0", "--limit", "2"])
    captured = capsys.readouterr()
    assert code == 3
    assert "LOSSLESS CHECK FAILED: broken-tests on tiny-words at T=0: only 0/2" in captured.err
    assert "FAILED" in captured.out   # the summary's lossless column
    report_dir = build([out], out=tmp_path / "report")
    text = (report_dir / "report.md").read_text()
    assert "**LOSSLESS CHECK FAILED**: broken-tests on tiny-words (T=0): 0 of 2" in text and "0/2 FAILED" in text


def test_the_target_self_check_is_recorded_in_the_manifest(tiny_dir, tmp_path):
    run_dir = runner.run(plan(tiny_dir, tmp_path / "run", methods=("vanilla",), limit=1), argv=["a"])
    check = json.loads((run_dir / "manifest.json").read_text())["sweeps"][-1]["target_check"]
    assert check["passed"] and check["tree_difference"] < 1e-5 and check["tree_nodes"] == 7
