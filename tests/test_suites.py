"""Suites: record counts, scoring against references, FollowEval's adapter, and bad-input messages."""
import json
import random
from concurrent.futures import ThreadPoolExecutor

import pytest

from harness.errors import UserError
from harness.sandbox import run_python, unavailable
from harness.suite import SUITES, Question, Suite, describe_suites, load_questions, read_jsonl
from suites.gsm8k import predicted_answer, reference_answer
from suites.humaneval import program

needs_sandbox = pytest.mark.skipif(unavailable() is not None, reason=f"no sandbox here: {unavailable()}")
TASKS = ("mt_bench", "translation", "summarization", "qa", "math_reasoning", "rag")


@pytest.mark.parametrize("name,count", [("specbench", 480), ("mtbench", 80), ("gsm8k", 1319), ("humaneval", 164),
                                        ("gsm8k_eagle80", 80)])
def test_record_counts(shared_data, name, count):
    questions = SUITES.get(name)(data_dir=shared_data).questions()
    assert len(questions) == count and len({q.id for q in questions}) == count


def test_specbench_tasks_and_category_selection(shared_data):
    questions = SUITES.get("specbench")(data_dir=shared_data).questions()
    tasks = {}
    for q in questions:
        tasks[q.task] = tasks.get(q.task, 0) + 1
    assert tasks == {t: 80 for t in TASKS}
    mt = [q for q in questions if q.task == "mt_bench"]
    assert {int(q.id) for q in mt} == set(range(81, 161)) and all(len(q.turns) == 2 for q in mt)
    assert {q.category for q in mt} == {"writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem",
                                        "humanities"}
    selected = load_questions(SUITES.get("specbench")(data_dir=shared_data), ["writing", "qa"])
    assert len(selected) == 90 and {q.category for q in selected} == {"writing", "qa"}
    assert len(load_questions(SUITES.get("specbench")(data_dir=shared_data), ("mt_bench",))) == 80


def test_mtbench_has_two_turns_everywhere(shared_data):
    questions = SUITES.get("mtbench")(data_dir=shared_data).questions()
    assert all(len(q.turns) == 2 and q.task == "mt_bench" for q in questions)
    assert len(load_questions(SUITES.get("mtbench")(data_dir=shared_data), ["coding"])) == 10


@pytest.mark.parametrize("name,kept", [("specbench", 10), ("mtbench", 10), ("gsm8k", 1319), ("gsm8k_eagle80", 80),
                                       ("humaneval", 164)])
def test_every_suite_selects_by_task_or_category_and_names_the_valid_ones(shared_data, name, kept):
    suite = SUITES.get(name)(data_dir=shared_data)
    first = suite.questions()[0]
    assert len(load_questions(suite, [first.category])) == kept
    assert load_questions(suite, [first.group])[0] == first
    with pytest.raises(UserError, match=rf"unknown {name} category nope \(valid: .*{first.category}"):
        load_questions(suite, ["nope", first.category])


class Labelled(Suite):
    """Three questions in two tasks (tests only; not registered)."""

    name = "labelled"

    def questions(self):
        return [Question(id=str(i), category=f"c{i}", turns=("t",), task="odd" if i % 2 else "even")
                for i in range(3)]


def test_selection_is_one_rule_for_every_suite():
    assert [q.id for q in load_questions(Labelled(), ["even"])] == ["0", "2"]
    assert [q.id for q in load_questions(Labelled(), ["c1", "even"])] == ["0", "1", "2"]
    assert [q.id for q in load_questions(Labelled(), None)] == ["0", "1", "2"]
    with pytest.raises(UserError, match=r"unknown labelled category nope \(valid: even, c0, odd, c1, c2\)"):
        load_questions(Labelled(), ["nope"])


def derangement(values: list) -> list[int]:
    """A permutation p with values[p[i]] != values[i] for every i."""
    order = list(range(len(values)))
    rng = random.Random(0)
    rng.shuffle(order)
    clashes = [i for i in order if values[order[i]] == values[i]]
    while clashes:
        for i in clashes:
            j = rng.randrange(len(order))
            order[i], order[j] = order[j], order[i]
        clashes = [i for i in range(len(order)) if values[order[i]] == values[i]]
    return order


def test_gsm8k_scores_references_right_and_deranged_references_wrong(shared_data):
    suite = SUITES.get("gsm8k")(data_dir=shared_data)
    questions = suite.questions()
    assert sum(suite.score(q, [q.reference])["accuracy"] for q in questions) == len(questions)
    wrong = derangement([reference_answer(q.reference) for q in questions])
    assert sorted(wrong) == list(range(len(questions)))
    assert sum(suite.score(q, [questions[j].reference])["accuracy"] for q, j in zip(questions, wrong)) == 0


@pytest.mark.parametrize("text,value", [("so the answer is $1,200.", 1200), ("-3 apples", -3), ("5.0 km", 5),
                                        ("no number", None), ("from 10-15 cars", 15), ("it is -$4.50.", -4.5),
                                        ("3 + 4 = 7\nSo 1,000,000 dollars", 1_000_000)])
def test_gsm8k_answer_extraction(text, value):
    assert predicted_answer(text) == value


def test_gsm8k_eagle80_subset_is_reference_line_order(shared_data):
    questions = SUITES.get("gsm8k_eagle80")(data_dir=shared_data).questions()
    full = SUITES.get("gsm8k")(data_dir=shared_data, variant="eagle80").questions()
    assert [q.id for q in questions][:3] == ["30", "754", "429"] and questions == full
    with pytest.raises(UserError, match="variant"):
        SUITES.get("gsm8k")(data_dir=shared_data, variant="tiny")


@needs_sandbox
def test_humaneval_canonical_solutions_all_pass(shared_data):
    questions = SUITES.get("humaneval")(data_dir=shared_data).questions()
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda q: run_python(program(q.reference, q.reference["canonical_solution"])),
                                questions))
    failed = [q.id for q, r in zip(questions, results) if not r.passed]
    assert not failed, failed


@needs_sandbox
def test_humaneval_answer_forms(shared_data):
    suite = SUITES.get("humaneval")(data_dir=shared_data, timeout_s=2)
    assert suite.unsafe
    questions = {q.id: q for q in suite.questions()}
    first = questions["HumanEval/0"]
    assert first.turns[0] == "Complete the code I provided." + first.reference["prompt"]
    full = first.reference["prompt"] + first.reference["canonical_solution"]
    assert suite.score(first, ["    return False\n"]) == {"pass@1": 0.0}
    assert suite.score(first, [first.reference["canonical_solution"]]) == {"pass@1": 1.0}
    assert suite.score(first, [f"Here you go:\n```python\n{full}\n```\nDone."]) == {"pass@1": 1.0}
    assert suite.score(first, [f"```python\n{full}"]) == {"pass@1": 1.0}  # cut off before the closing fence
    assert suite.score(first, ["    while True:\n        pass\n"]) == {"pass@1": 0.0}
    # a standalone definition may call the prompt's helper (poly) without repeating it
    zero = questions["HumanEval/32"]
    standalone = "def find_zero(xs: list):\n" + zero.reference["canonical_solution"]
    assert "def poly" not in standalone and suite.score(zero, [f"```py\n{standalone}\n```"]) == {"pass@1": 1.0}


def write_followeval(root, records):
    (root / "followeval").mkdir(parents=True, exist_ok=True)
    (root / "followeval" / "followeval.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")


def test_followeval_adapter_scores_rules(tmp_path):
    write_followeval(tmp_path, [
        {"id": 1, "lang": "en", "instruction": "Answer in one word: capital of France?", "dimensions": ["constraints"],
         "regex": "^paris\\.?$", "regex_mode": "fullmatch", "flags": "i"},
        {"id": 2, "lang": "zh", "instruction": "用三个字回答", "dimensions": ["constraints"], "regex": "^.{3}$"},
        {"id": 3, "lang": "en", "instruction": "Mention a prime below 5.", "regex": r"\b[23]\b"}])
    suite = SUITES.get("followeval")(data_dir=tmp_path)
    first, second, third = suite.questions()
    assert (first.turns, first.category, first.id) == (("Answer in one word: capital of France?",), "en", "1")
    assert suite.score(first, ["  Paris.\n"]) == {"accuracy": 1.0}
    assert suite.score(first, ["It is Paris"]) == {"accuracy": 0.0}
    assert suite.score(second, ["北京市"]) == {"accuracy": 1.0}
    assert suite.score(third, ["Take 3, for example."]) == {"accuracy": 1.0}
    assert suite.score(third, ["Seven."]) == {"accuracy": 0.0}
    assert [q.id for q in load_questions(SUITES.get("followeval")(data_dir=tmp_path), ["zh"])] == ["2"]


def test_followeval_bad_records_name_file_line_and_field(tmp_path):
    write_followeval(tmp_path, [{"id": 1, "lang": "en", "instruction": "x", "regex": "a"},
                                {"id": 2, "lang": "en", "regex": "a"}])
    with pytest.raises(UserError, match=r"followeval.jsonl:2: missing field instruction"):
        SUITES.get("followeval")(data_dir=tmp_path).questions()
    for bad, message in (({"lang": "fr"}, "lang must be"), ({"regex": "("}, "bad regex"),
                         ({"regex_mode": "partial"}, "regex_mode"), ({"flags": "x"}, "flags")):
        write_followeval(tmp_path, [{"id": 1, "lang": "en", "instruction": "x", "regex": "a", **bad}])
        with pytest.raises(UserError, match=rf"followeval.jsonl:1: {message}"):
            SUITES.get("followeval")(data_dir=tmp_path).questions()


def test_followeval_without_data_says_it_is_not_public(tmp_path):
    with pytest.raises(UserError, match=r"not public.*followeval/followeval.jsonl"):
        SUITES.get("followeval")(data_dir=tmp_path).questions()


def test_malformed_lines_and_missing_fields_name_file_and_line(tmp_path):
    bad = tmp_path / "spec_bench" / "question.jsonl"
    bad.parent.mkdir()
    bad.write_text('{"question_id": 1, "category": "qa", "turns": ["hi"]}\n{"question_id": 2, oops}\n')
    with pytest.raises(UserError, match=r"question.jsonl:2: not valid JSON"):
        SUITES.get("specbench")(data_dir=tmp_path).questions()
    bad.write_text('{"question_id": 1, "category": "qa"}\n')
    with pytest.raises(UserError, match=r"question.jsonl:1: missing field turns"):
        SUITES.get("specbench")(data_dir=tmp_path).questions()
    gsm = tmp_path / "gsm8k" / "test.jsonl"
    gsm.parent.mkdir()
    gsm.write_text('{"question": "1+1?", "answer": "#### 2"}\n\n{"question": "2+2?"}\n')
    with pytest.raises(UserError, match=r"test.jsonl:3: missing field answer"):
        SUITES.get("gsm8k")(data_dir=tmp_path).questions()
    gsm.write_text('{"question": "1+1?", "answer": "#### 2"}\n\n{"question": "2+2?", "answer": "#### 4"}\n')
    assert [q.id for q in SUITES.get("gsm8k")(data_dir=tmp_path).questions()] == ["0", "2"]  # ids are line numbers
    assert [r["answer"] for r in read_jsonl(gsm)] == ["#### 2", "#### 4"]


def test_a_missing_data_file_says_how_to_provide_it(tmp_path):
    with pytest.raises(UserError, match="--data-dir"):
        SUITES.get("mtbench")(data_dir=tmp_path).questions()
    assert Question(id="x", category="c", turns=("t",)).task == ""


def test_describe_suites(shared_data):
    rows = {row["name"]: row for row in describe_suites(shared_data)}
    assert {"specbench", "mtbench", "gsm8k", "gsm8k_eagle80", "humaneval", "followeval"} <= set(rows)
    assert rows["specbench"]["questions"] == 480 and rows["specbench"]["tasks"] == {t: 80 for t in TASKS}
    assert rows["mtbench"]["categories"]["writing"] == 10 and rows["gsm8k"]["questions"] == 1319
    assert rows["humaneval"]["unsafe"] and not rows["gsm8k"]["unsafe"]
    assert rows["followeval"]["questions"] is None and "not public" in rows["followeval"]["error"]


def test_a_download_must_have_the_pinned_sha256_and_every_suite_pins_a_commit(tmp_path, monkeypatch):
    """Downloads (here from a file:// URL) are kept only with the pinned digest; the suites' URLs name commits."""
    import hashlib
    import re

    from harness.suite import resolve_data_file
    from suites import gsm8k, humaneval, mtbench, specbench

    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("HARNESS_DATA_DIR", raising=False)
    monkeypatch.delenv("HARNESS_OFFLINE", raising=False)
    source = tmp_path / "question.jsonl"
    source.write_text('{"question_id": 1}\n')
    url = source.as_uri()
    with pytest.raises(UserError, match="not the pinned 0000"):
        resolve_data_file("x/question.jsonl", url, None, "0000")
    assert not (tmp_path / "cache" / "data" / "x").exists() or not any((tmp_path / "cache" / "data" / "x").iterdir())
    good = hashlib.sha256(source.read_bytes()).hexdigest()
    assert resolve_data_file("x/question.jsonl", url, None, good).read_text() == source.read_text()
    for module in (gsm8k, humaneval, mtbench, specbench):
        assert re.search(r"githubusercontent\.com/[^/]+/[^/]+/[0-9a-f]{40}/", module.URL), module.URL
        assert re.fullmatch(r"[0-9a-f]{64}", module.SHA256)
