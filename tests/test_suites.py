"""Suites: record counts, scoring against references, FollowEval's adapter, and bad-input messages."""
import json
import random
from concurrent.futures import ThreadPoolExecutor

import pytest

from harness.errors import UserError
from harness.suite import SUITES, Question, read_jsonl
from suites.gsm8k import predicted_answer, reference_answer
from suites.humaneval import program
from harness.sandbox import run_python


@pytest.mark.parametrize("name,count", [("specbench", 480), ("mtbench", 80), ("gsm8k", 1319), ("humaneval", 164),
                                        ("gsm8k_eagle80", 80)])
def test_record_counts(shared_data, name, count):
    assert len(SUITES.get(name)(data_dir=shared_data).questions()) == count


def test_specbench_tasks_and_category_selection(shared_data):
    questions = SUITES.get("specbench")(data_dir=shared_data).questions()
    tasks = {}
    for q in questions:
        tasks[q.task] = tasks.get(q.task, 0) + 1
    assert tasks == {t: 80 for t in ("mt_bench", "translation", "summarization", "qa", "math_reasoning", "rag")}
    assert all(len(q.turns) == 2 for q in questions if q.task == "mt_bench")
    writing = SUITES.get("specbench")(data_dir=shared_data, categories=["writing", "qa"]).questions()
    assert len(writing) == 90
    with pytest.raises(UserError, match="unknown category nope"):
        SUITES.get("specbench")(data_dir=shared_data, categories=["nope"]).questions()


def test_mtbench_has_two_turns_everywhere(shared_data):
    questions = SUITES.get("mtbench")(data_dir=shared_data).questions()
    assert all(len(q.turns) == 2 for q in questions) and {q.category for q in questions} >= {"writing", "coding"}


def test_gsm8k_scores_references_right_and_shuffled_references_wrong(shared_data):
    suite = SUITES.get("gsm8k")(data_dir=shared_data)
    questions = suite.questions()
    assert sum(suite.score(q, [q.reference])["accuracy"] for q in questions) == len(questions)
    answers = [reference_answer(q.reference) for q in questions]
    order = list(range(len(questions)))
    random.Random(0).shuffle(order)
    # a derangement whose final answers all differ from the question's own
    wrong = [next(j for j in order[i:] + order[:i] if answers[j] != answers[i]) for i in range(len(questions))]
    assert sum(suite.score(q, [questions[j].reference])["accuracy"] for q, j in zip(questions, wrong)) == 0


@pytest.mark.parametrize("text,value", [("so the answer is $1,200.", 1200), ("-3 apples", -3), ("5.0 km", 5),
                                        ("no number", None)])
def test_gsm8k_answer_extraction(text, value):
    assert predicted_answer(text) == value


def test_humaneval_canonical_solutions_all_pass(shared_data):
    questions = SUITES.get("humaneval")(data_dir=shared_data).questions()
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda q: run_python(program(q.reference, q.reference["canonical_solution"])),
                                questions))
    failed = [q.id for q, r in zip(questions, results) if not r.passed]
    assert not failed, failed


def test_humaneval_broken_and_fenced_answers(shared_data):
    suite = SUITES.get("humaneval")(data_dir=shared_data)
    question = suite.questions()[0]
    assert suite.score(question, ["    return False\n"]) == {"pass@1": 0.0}
    full = question.reference["prompt"] + question.reference["canonical_solution"]
    assert suite.score(question, [f"Here you go:\n```python\n{full}\n```\nDone."]) == {"pass@1": 1.0}


def write_followeval(root, records):
    (root / "followeval").mkdir(parents=True, exist_ok=True)
    (root / "followeval" / "followeval.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")


def test_followeval_adapter_scores_rules(tmp_path):
    write_followeval(tmp_path, [
        {"id": 1, "lang": "en", "instruction": "Answer in one word: capital of France?", "dimensions": ["constraints"],
         "regex": "^paris\\.?$", "regex_mode": "fullmatch", "flags": "i"},
        {"id": 2, "lang": "zh", "instruction": "用三个字回答", "dimensions": ["constraints"], "regex": "^.{3}$"}])
    suite = SUITES.get("followeval")(data_dir=tmp_path)
    first, second = suite.questions()
    assert suite.score(first, ["Paris."]) == {"accuracy": 1.0}
    assert suite.score(first, ["It is Paris"]) == {"accuracy": 0.0}
    assert suite.score(second, ["北京市"]) == {"accuracy": 1.0}
    assert [q.id for q in SUITES.get("followeval")(data_dir=tmp_path, categories=["zh"]).questions()] == ["2"]


def test_followeval_without_data_says_it_is_not_public(tmp_path):
    with pytest.raises(UserError, match="not public"):
        SUITES.get("followeval")(data_dir=tmp_path).questions()


def test_malformed_lines_and_missing_fields_name_file_and_line(tmp_path):
    bad = tmp_path / "spec_bench" / "question.jsonl"
    bad.parent.mkdir()
    bad.write_text('{"question_id": 1, "category": "qa", "turns": ["hi"]}\n{"question_id": 2, oops}\n')
    with pytest.raises(UserError, match=r"question.jsonl:2: not valid JSON"):
        list(read_jsonl(bad))
    bad.write_text('{"question_id": 1, "category": "qa"}\n')
    with pytest.raises(UserError, match=r"question.jsonl:1: missing field turns"):
        SUITES.get("specbench")(data_dir=tmp_path).questions()


def test_a_missing_data_file_says_how_to_provide_it(tmp_path):
    with pytest.raises(UserError, match="--data-dir"):
        SUITES.get("mtbench")(data_dir=tmp_path).questions()
    assert Question(id="x", category="c", turns=("t",)).task == ""
