"""``harness run --stack vllm``: the suite's prompts served by vLLM at several concurrency levels.

Each method is one vLLM engine (vanilla: none; pld: vLLM's n-gram proposer with the harness's PLD
settings; eagle2 / hass / coral: the draft exported as ``harness export --format vllm`` drafts it,
a chain of k tokens). Prompts are the first turns, as token ids rendered by the harness's chat
template, decoded at T = 0. Every request is a row (output tokens, TTFT, time per output token,
end-to-end latency) with ``stack`` and ``concurrency``; every (method, concurrency) cell gets
throughput, latency percentiles and vLLM's own spec-decode counters. The engine runs in the
engines venv (harness/engines/venv.py) as a subprocess, which ends with the run, also on Ctrl-C.
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from harness import chat, env
from harness.drafter import METHODS
from harness.learned import learned
from harness.engines import venv
from harness.engines.check import hf_folder
from harness.errors import UserError
from harness.records import DEFAULT_BASELINE
from harness.suite import SUITES, load_questions
from harness.target import Target

SERVE_WORKER = Path(__file__).with_name("vllm_serve_worker.py")
CELLS_FILE = "serving_cells.jsonl"
# The engine without speculation: the reference of every throughput speedup and of the texts every cell keeps.
BASELINE = DEFAULT_BASELINE
EAGLE_FAMILY = ("eagle2", "hass", "coral")
PERCENTILES = (50, 90, 99)


@dataclass(frozen=True)
class ServePlan:
    methods: tuple[str, ...]
    suite: str
    concurrency: tuple[int, ...]
    out: Path
    target: str | None = None
    limit: int | None = None
    max_new_tokens: int = 128
    options: dict = field(default_factory=dict)       # method -> {option: value}
    checkpoints: dict = field(default_factory=dict)   # method -> checkpoint path
    data_dir: Path | None = None


def speculative_config(method: str, plan: ServePlan, target: Target, scratch: Path) -> dict | None:
    """vLLM's speculative_config for a harness method; a UserError for a method vLLM cannot run."""
    options = plan.options.get(method, {})
    if method == BASELINE:
        return None
    if method == "pld":
        defaults = METHODS.get("pld").Options()
        return {"method": "ngram", "num_speculative_tokens": int(options.get("num_draft", defaults.num_draft)),
                "prompt_lookup_max": int(options.get("max_ngram", defaults.max_ngram)),
                "prompt_lookup_min": int(options.get("min_ngram", defaults.min_ngram))}
    if method in EAGLE_FAMILY:
        cls = learned(method, "export")
        draft = scratch / method
        cls.export(cls.load_net(target, plan.checkpoints.get(method)), target, draft, "vllm", torch.float32)
        return {"method": "eagle", "model": str(draft), "num_speculative_tokens": int(options.get("k", 3))}
    raise UserError(f"--stack vllm runs vanilla, pld, {', '.join(EAGLE_FAMILY)}; not {method!r}")


def run(plan: ServePlan, argv: list[str]) -> Path:
    interpreter = venv.python()
    version = venv.vllm_version(interpreter)
    if not plan.concurrency or min(plan.concurrency) < 1:
        raise UserError("--concurrency takes positive integers, e.g. 1,2,4")
    target = Target.load(plan.target, dtype="float32", device="cpu")
    suite = SUITES.get(plan.suite)(data_dir=plan.data_dir)
    questions = load_questions(suite)[: plan.limit]
    prompts = [chat.render(target.tokenizer, [{"role": "user", "content": q.turns[0]}]).tolist() for q in questions]
    stops = chat.stop_ids(target.tokenizer, getattr(target.model, "generation_config", None))
    plan.out.mkdir(parents=True, exist_ok=True)
    (plan.out / "serving_manifest.json").write_text(json.dumps({
        "stack": "vllm", "vllm": version, "argv": argv, "target": target.model_id, "suite": plan.suite,
        "questions": len(questions), "max_new_tokens": plan.max_new_tokens, "concurrency": list(plan.concurrency),
        "options": plan.options, "checkpoints": plan.checkpoints, "turns": "first turn of each question",
        "environment": env.capture()}, indent=2, default=str))
    cells_path = plan.out / CELLS_FILE
    cells_path.unlink(missing_ok=True)
    ordered = sorted(plan.methods, key=lambda m: m != BASELINE)
    reference: dict[int, list[int]] = {}   # vanilla's tokens at the first level: the texts every cell must keep
    with tempfile.TemporaryDirectory() as scratch:
        for method in ordered:
            spec = speculative_config(method, plan, target, Path(scratch))
            print(f"serving {method} with vLLM {version} at concurrency {','.join(map(str, plan.concurrency))} ...",
                  file=sys.stderr)
            result = venv.run_worker(interpreter, SERVE_WORKER, {
                "model": str(hf_folder(target)), "spec": spec, "prompts": prompts, "max_tokens": plan.max_new_tokens,
                "stop_ids": sorted(stops), "max_model_len": 2048, "dtype": "float32",
                "concurrency": list(plan.concurrency)}, Path(scratch))
            if method == BASELINE:
                reference = {r["index"]: r["tokens"] for r in result["levels"][0]["records"]}
            write_method(plan, method, spec, questions, target, stops, result, cells_path, reference)
    return plan.out


def write_method(plan: ServePlan, method: str, spec: dict | None, questions, target: Target, stops: frozenset[int],
                 result: dict, cells_path: Path, reference: dict[int, list[int]]) -> None:
    answers = plan.out / "serving" / plan.suite / f"{method}.jsonl"
    answers.parent.mkdir(parents=True, exist_ok=True)
    with open(answers, "w") as rows, open(cells_path, "a") as cells:
        for level in result["levels"]:
            records = level["records"]
            for record in records:
                question = questions[record["index"]]
                n = len(record["tokens"])
                rows.write(json.dumps({
                    "question_id": question.id, "category": question.category, "method": method, "suite": plan.suite,
                    "stack": "vllm", "concurrency": level["concurrency"], "temperature": 0.0,
                    "model_id": f"{target.model_id}-{method}-vllm", "new_tokens": n, "ttft_s": record["ttft_s"],
                    "tpot_s": (record["latency_s"] - record["ttft_s"]) / (n - 1) if n > 1 else None,
                    "latency_s": record["latency_s"], "start_s": record["start"], "tstamp": time.time(),
                    "turns": [chat.decode(target.tokenizer, record["tokens"], stops)]}) + "\n")
            summary = cell_summary(method, plan.suite, spec, level)
            if reference:
                summary["same_text_as_vanilla"] = sum(chat.decode(target.tokenizer, r["tokens"], stops) ==
                                                      chat.decode(target.tokenizer, reference[r["index"]], stops)
                                                      for r in records)
            cells.write(json.dumps(summary) + "\n")


def cell_summary(method: str, suite: str, spec: dict | None, level: dict) -> dict:
    records = level["records"]
    tokens = sum(len(r["tokens"]) for r in records)
    tpot = [(r["latency_s"] - r["ttft_s"]) / (len(r["tokens"]) - 1) for r in records if len(r["tokens"]) > 1]
    counters = level["counters"]
    drafts = counters["vllm:spec_decode_num_drafts"]
    summary = {"stack": "vllm", "suite": suite, "method": method, "concurrency": level["concurrency"],
               "requests": len(records), "output_tokens": tokens, "wall_s": level["wall_s"],
               "throughput_tok_s": tokens / level["wall_s"], "spec": spec, "drafts": drafts,
               "draft_tokens": counters["vllm:spec_decode_num_draft_tokens"],
               "accepted_tokens": counters["vllm:spec_decode_num_accepted_tokens"],
               "mean_acceptance_length":
                   1 + counters["vllm:spec_decode_num_accepted_tokens"] / drafts if drafts else None}
    for name, values in (("ttft_s", [r["ttft_s"] for r in records]), ("tpot_s", tpot),
                         ("latency_s", [r["latency_s"] for r in records])):
        for p in PERCENTILES:
            summary[f"{name}_p{p}"] = float(np.percentile(values, p)) if values else None
    return summary


def read_cells(run_dir: Path) -> list[dict]:
    path = run_dir / CELLS_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def speedup_rows(cells: list[dict]) -> list[dict]:
    """Cells with throughput speedup over vanilla at the same suite and concurrency (None without vanilla)."""
    base = {(c["suite"], c["concurrency"]): c["throughput_tok_s"] for c in cells if c["method"] == BASELINE}
    return [{**c, "speedup": c["throughput_tok_s"] / base[(c["suite"], c["concurrency"])]
             if (c["suite"], c["concurrency"]) in base else None} for c in cells]


def format_cells(cells: list[dict]) -> str:
    head = (f"{'method':<8} {'conc':>4} {'tok/s':>7} {'speedup':>7} {'MAL':>5} {'TTFT p50/p90/p99 s':>20} "
            f"{'TPOT p50/p90/p99 ms':>21} {'latency p50/p90/p99 s':>23} {'same text':>9}")
    lines = [head]
    for c in speedup_rows(cells):
        mal = f"{c['mean_acceptance_length']:.2f}" if c["mean_acceptance_length"] else "—"
        speed = f"{c['speedup']:.2f}" if c["speedup"] else "—"
        ttft = "/".join(f"{c[f'ttft_s_p{p}']:.2f}" for p in PERCENTILES)
        tpot = "/".join("—" if c[f"tpot_s_p{p}"] is None else f"{1000 * c[f'tpot_s_p{p}']:.0f}"
                        for p in PERCENTILES)
        latency = "/".join(f"{c[f'latency_s_p{p}']:.1f}" for p in PERCENTILES)
        same = f"{c['same_text_as_vanilla']}/{c['requests']}" if "same_text_as_vanilla" in c else "—"
        lines.append(f"{c['method']:<8} {c['concurrency']:>4} {c['throughput_tok_s']:>7.1f} {speed:>7} {mal:>5} "
                     f"{ttft:>20} {tpot:>21} {latency:>23} {same:>9}")
    return "\n".join(lines)
