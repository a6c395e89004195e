"""Serving mode without an engine: cell statistics, speedup by concurrency, the report section, and the
one-line errors (engine missing, a method vLLM cannot run)."""
import json

import pytest

from harness import report
from harness.cli import main
from harness.engines import serving


def level(concurrency: int, wall: float, accepted: int = 0, drafts: int = 0) -> dict:
    records = [{"index": i, "tokens": list(range(11)), "start": 0.0, "ttft_s": 0.1 * (i + 1),
                "latency_s": 1.1 * (i + 1)} for i in range(4)]
    counters = {"vllm:spec_decode_num_drafts": drafts, "vllm:spec_decode_num_draft_tokens": 3 * drafts,
                "vllm:spec_decode_num_accepted_tokens": accepted, "vllm:spec_decode_num_accepted_tokens_per_pos": []}
    return {"concurrency": concurrency, "wall_s": wall, "records": records, "counters": counters}


def test_cell_summary_counts_throughput_percentiles_and_acceptance():
    cell = serving.cell_summary("eagle2", "mtbench", {"method": "eagle"}, level(2, 4.0, accepted=30, drafts=20))
    assert cell["output_tokens"] == 44 and cell["throughput_tok_s"] == pytest.approx(11.0)
    assert cell["mean_acceptance_length"] == pytest.approx(2.5)
    assert cell["tpot_s_p50"] == pytest.approx((2.75 - 0.25) / 10)
    assert serving.cell_summary("vanilla", "mtbench", None, level(1, 4.0))["mean_acceptance_length"] is None


def test_report_shows_speedup_by_concurrency(tmp_path):
    run = tmp_path / "served"
    run.mkdir()
    cells = [serving.cell_summary(m, "mtbench", None, level(c, wall, accepted=10, drafts=5))
             for m, c, wall in (("vanilla", 1, 4.0), ("vanilla", 4, 2.0), ("eagle2", 1, 2.0), ("eagle2", 4, 1.6))]
    (run / serving.CELLS_FILE).write_text("".join(json.dumps(c) + "\n" for c in cells))
    rows = {(r["method"], r["concurrency"]): r["speedup"] for r in serving.speedup_rows(cells)}
    assert rows[("eagle2", 1)] == pytest.approx(2.0) and rows[("eagle2", 4)] == pytest.approx(1.25)
    out = report.build([run], tmp_path / "report")
    text = (out / "report.md").read_text()
    assert "Serving (vLLM): speedup vs concurrency" in text and "| c=1 | c=4 |" in text


def test_missing_engine_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HARNESS_ENGINES_PYTHON", str(tmp_path / "nope"))
    assert main(["run", "--stack", "vllm", "--methods", "vanilla", "--suite", "mtbench", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "make engines" in err and len(err.splitlines()) == 1


def test_a_method_vllm_cannot_run_is_refused(tmp_path):
    plan = serving.ServePlan(methods=("fspad",), suite="mtbench", concurrency=(1,), out=tmp_path)
    with pytest.raises(serving.UserError, match="not 'fspad'"):
        serving.speculative_config("fspad", plan, None, tmp_path)


def test_worker_result_and_the_engines_reason_in_one_line(tmp_path):
    import sys
    from pathlib import Path

    from harness.engines import venv

    good = tmp_path / "good.py"
    good.write_text("import json, sys\njob = json.load(open(sys.argv[1]))\n"
                    "json.dump({'echo': job['x']}, open(sys.argv[2], 'w'))\n")
    assert venv.run_worker(Path(sys.executable), good, {"x": 3}, tmp_path) == {"echo": 3}
    bad = tmp_path / "bad.py"
    bad.write_text("print('loading...')\nraise ValueError('draft config does not fit')\n")
    with pytest.raises(serving.UserError, match="vLLM failed: ValueError: draft config does not fit"):
        venv.run_worker(Path(sys.executable), bad, {}, tmp_path)
