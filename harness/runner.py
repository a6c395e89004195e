"""A sweep: methods x suites x temperatures on one target, written as answer rows, resumable.

Every input is checked (harness/validate.py) before anything is written: names, settings, device
and data before the model loads, then its context, the run folder and every draft checkpoint
before the first cell, and the target passes the lossless self-check (harness/selfcheck.py).
Within each (suite, temperature) the baseline (vanilla) runs first, so every speedup has a baseline from the
same run on the same stack. A question already in a cell's answer file is skipped, so rerunning a
command resumes it. One run at a time holds a run directory. Every row names the sweep (session),
host, process and device that timed it, and how busy the machine was. A question that cannot run (a
prompt longer than the context) becomes a row that says why, and the sweep goes on.
With ``workers`` the questions run on Ray workers (harness/cluster.py) and this process writes their rows.
With ``replay`` every method but the baseline is replayed from the baseline's rows at the same temperature
(harness/replay.py): exact accept lengths without timing, in cells labelled ``<method>-replay``.
"""
from __future__ import annotations

import hashlib
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from harness import chat, env, machine_load, replay, selfcheck, validate
from harness.decode import PromptTooLong, TurnDecoder
from harness.records import (DEFAULT_BASELINE, Manifest, RowWriter, answer_file, comparable_settings, make_row,
                             make_skipped_row, new_session, read_rows, run_dir_lock)
from harness.sampling import SamplingParams
from harness.suite import Question, Suite
from harness.target import Target

WARMUP_MAX_NEW_TOKENS = 64


@dataclass(frozen=True)
class Plan:
    methods: tuple[str, ...]
    suites: tuple[str, ...]
    temperatures: tuple[float, ...] = (0.0,)
    target: str | None = None
    max_new_tokens: int = 256
    limit: int | None = None
    per_task: bool = False          # limit counts per task (Spec-Bench task / category), not per suite
    categories: tuple[str, ...] | None = None
    seed: int = 0
    top_p: float = 1.0
    top_k: int = 0
    out: Path | None = None
    data_dir: Path | None = None
    options: dict = field(default_factory=dict)       # method -> {option: value}
    checkpoints: dict = field(default_factory=dict)   # method -> checkpoint path
    warmup: int = 1
    dtype: str = "auto"
    device: str = "auto"
    max_len: int | None = None
    compile: str = "off"           # harness/static_shapes.py COMPILE_MODES
    compile_bucket: int = 256      # attention window granularity of fixed-shape forwards
    allow_code_exec: bool = False
    results_root: Path = Path("results")
    device_map: str | None = None   # accelerate's auto | balanced: one target across the visible GPUs
    workers: int | None = None      # Ray workers (harness/cluster.py); None runs in this process
    cluster: str | None = None      # address of a running Ray cluster (default: start one on this machine)
    baseline: str = DEFAULT_BASELINE   # runs first in each (suite, temperature); every speedup's reference
    replay: bool = False               # methods other than the baseline replayed from its answers

    def settings(self, target: Target) -> dict:
        """What every row of a run directory shares; a resumed run must repeat it exactly."""
        return {"target": target.model_id, "target_source": target.source, "dtype": str(target.dtype),
                "device": str(target.device), "max_len": target.max_len, "max_new_tokens": self.max_new_tokens,
                "seed": self.seed, "top_p": self.top_p, "top_k": self.top_k, "warmup": self.warmup,
                "warmup_max_new_tokens": min(self.max_new_tokens, WARMUP_MAX_NEW_TOKENS),
                "options": self.options, "checkpoints": self.checkpoints, "batch_size": 1,
                "compile": self.compile, "compile_bucket": self.compile_bucket, "device_map": self.device_map}


def run(plan: Plan, argv: list[str]) -> Path:
    if plan.workers:
        from harness import cluster   # imports Ray, which nothing else needs
        cluster.require_ray()         # one line saying how to install it, before anything loads
    checked = validate.before_load(plan)
    plan, suites = checked.plan, checked.suites
    questions = {name: _first(found, plan.limit, plan.per_task) for name, found in checked.questions.items()}
    if plan.workers:
        return cluster.run(checked, questions, argv)
    target = load_target(plan)
    check = selfcheck.require(target, plan.seed)   # before anything is measured or written
    settings = plan.settings(target)
    run_dir = run_dir_for(plan, settings)
    # One turn decoder per method for the whole sweep, all built (checkpoints read) before anything is
    # written: a drafter's start() resets it per sequence, and compiled steps (--compile) are built once.
    decoders = validate.after_load(checked, target, run_dir)
    if plan.replay:
        replay.check_decoders(decoders)   # the baseline too: its tokens are the ones replayed
    with run_dir_lock(run_dir):
        _sweep(plan, argv, run_dir, settings, target, decoders, suites, questions, check.as_dict())
    return run_dir


def load_target(plan: Plan) -> Target:
    """The plan's target, its tree forwards compiled as asked."""
    target = Target.load(plan.target, dtype=plan.dtype, device=plan.device, max_len=plan.max_len,
                         device_map=plan.device_map)
    target.compile_tree_forward(plan.compile, plan.compile_bucket)
    return target


def run_dir_for(plan: Plan, settings: dict) -> Path:
    """--out, else results/<target>-<hash of the settings>."""
    digest = hashlib.sha256(json.dumps(comparable_settings(settings), sort_keys=True).encode()).hexdigest()[:8]
    return plan.out or plan.results_root / f"{_slug(settings['target'])}-{digest}"


def _sweep(plan: Plan, argv: list[str], run_dir: Path, settings: dict, target: Target, decoders: dict[str, TurnDecoder],
           suites: dict[str, Suite], questions: dict[str, list[Question]], target_check: dict) -> None:
    session = new_session()
    labels = cell_labels(plan, decoders)
    cells = [cell_entry(run_dir, suite_name, temperature, labels[method], decoder.method.settings(),
                        decoder.method.checkpoint, decoder.lossless, replayed=labels[method] != method)
             for suite_name in suites for temperature in plan.temperatures for method, decoder in decoders.items()]
    manifest = Manifest.open(run_dir, settings, env.capture(), argv, session, plan.baseline, cells)
    manifest.data["sweeps"][-1]["target_check"] = target_check
    worker = {**env.worker(target.device), "session": session}
    manifest.data["sweeps"][-1]["workers"] = [worker]
    if plan.replay:
        manifest.data["sweeps"][-1]["replayed"] = True
    torch.manual_seed(plan.seed)
    status = "interrupted"
    try:
        for suite_name, suite in suites.items():
            for temperature in plan.temperatures:
                sampling = SamplingParams(temperature, plan.top_p, plan.top_k)
                for method, decoder in decoders.items():   # the baseline first
                    label = labels[method]
                    path = answer_file(run_dir, suite_name, label, temperature)
                    replayed = label != method
                    source = answer_file(run_dir, suite_name, plan.baseline, temperature) if replayed else None
                    before = machine_load.sample()
                    if _run_cell(plan, target, suite, questions[suite_name], decoder, sampling, path, worker, source):
                        manifest.add_cell_load({"suite": suite_name, "method": label, "temperature": temperature},
                                               machine_load.between(before, machine_load.sample()))
        status = "complete"
    finally:
        manifest.finish_sweep(status)


def cell_labels(plan: Plan, methods) -> dict[str, str]:
    """Each method's cell label: ``<method>-replay`` for the methods a ``--replay`` sweep replays."""
    return {m: m + replay.SUFFIX if plan.replay and m != plan.baseline else m for m in methods}


def cell_entry(run_dir: Path, suite: str, temperature: float, method: str, options: dict, checkpoint: str | None,
               lossless: bool, replayed: bool = False) -> dict:
    """A cell's line in the manifest (``method`` is its label; replayed cells say so)."""
    path = answer_file(run_dir, suite, method, temperature)
    cell = {"suite": suite, "method": method, "temperature": temperature, "file": str(path.relative_to(run_dir)),
            "options": options, "checkpoint": checkpoint, "lossless": lossless}
    return {**cell, "replayed": True} if replayed else cell


def scoring(plan: Plan, suite: Suite) -> bool:
    """Whether a suite's answers are scored here; says so once when they are not."""
    if suite.unsafe and not plan.allow_code_exec:
        print(f"note: {suite.name} answers are not scored: scoring executes model output; "
              f"pass --allow-code-exec to run it in the sandbox", file=sys.stderr)
        return False
    return True


def _run_cell(plan: Plan, target: Target, suite: Suite, questions: list[Question], decoder: TurnDecoder,
              sampling: SamplingParams, path: Path, worker: dict, source: Path | None = None) -> int:
    """Answer the cell's questions that have no row yet; return how many ran. With ``source`` (the baseline's
    answer file of the cell) they are replayed from its rows (harness/replay.py), untimed."""
    done = {str(row["question_id"]) for row in read_rows(path, repair=True)}
    todo = [q for q in questions if q.id not in done]
    if not todo:
        return 0
    stops = chat.stop_ids(target.tokenizer, getattr(target.model, "generation_config", None))
    if source is None:
        warm_up(plan, target, decoder, questions, stops, sampling)
    else:
        sources = replay.baseline_rows(read_rows(source), [q.id for q in todo])
        decoder = replay.Replayed(decoder, target)
    scored = scoring(plan, suite)
    label = f"{suite.name} {decoder.method.name}{'' if source is None else replay.SUFFIX} T={sampling.temperature:g}"
    with RowWriter(path) as writer, tqdm(total=len(questions), initial=len(questions) - len(todo), desc=label,
                                          file=sys.stderr, dynamic_ncols=True) as bar:
        for question in todo:
            if source is not None:
                decoder.begin(sources[question.id])
            row = answer_row(plan, target, suite, question, decoder, stops, sampling, scored, worker)
            writer.write(row if source is None else replay.label(row))
            bar.update(1)
    return len(todo)


def answer_row(plan: Plan, target: Target, suite: Suite, question: Question, decoder: TurnDecoder,
               stops: frozenset[int], sampling: SamplingParams, scored: bool, worker: dict) -> dict:
    """One question's row: its answers timed turn by turn, or the reason it could not run. ``worker`` names
    the host, process, device and timing session; ``load`` how busy the machine was meanwhile."""
    method = decoder.method.name
    common = dict(question_id=int(question.id) if question.id.isdigit() else question.id,
                  category=question.category, task=question.group,
                  model_id=f"{target.model_id}-{method}-temperature-{sampling.temperature:g}",
                  method=method, suite=suite.name, temperature=sampling.temperature,
                  session=worker["session"], question_hash=question.text_hash)
    before = machine_load.sample()
    try:
        texts, gens, walls = _answer(plan, target, decoder, suite.name, question, stops, sampling)
    except PromptTooLong as exc:
        tqdm.write(f"note: {suite.name} question {question.id} skipped: {exc}", file=sys.stderr)
        row = make_skipped_row(**common, reason=str(exc))
    else:
        scores = suite.score(question, texts) if scored else {}
        row = make_row(**common, turns=texts, generations=gens, wall_times=walls, scores=scores,
                       lossless=decoder.lossless)
    row.load = machine_load.between(before, machine_load.sample())
    row.worker = {key: value for key, value in worker.items() if key != "session"}
    return row.to_json()


def _answer(plan: Plan, target: Target, decoder: TurnDecoder, suite: str, question: Question,
            stops: frozenset[int], sampling: SamplingParams) -> tuple[list[str], list, list[float]]:
    """Every turn of one question: (answer texts, Generations, wall times); PromptTooLong names the turn."""
    messages, texts, gens, walls = [], [], [], []
    for turn, content in enumerate(question.turns):
        messages.append({"role": "user", "content": content})
        prompt = chat.render(target.tokenizer, messages)
        rng = torch.Generator().manual_seed(_seed(plan.seed, suite, question.id, turn))
        start = time.perf_counter()
        try:
            gen = decoder.decode_turn(prompt, max_new_tokens=plan.max_new_tokens, stop_ids=stops, sampling=sampling,
                                      rng=rng)
        except PromptTooLong as exc:
            raise PromptTooLong(f"turn {turn + 1}: {exc}" if len(question.turns) > 1 else str(exc)) from None
        walls.append(time.perf_counter() - start)
        text = chat.decode(target.tokenizer, gen.tokens, stops)
        messages.append({"role": "assistant", "content": text})
        texts.append(text)
        gens.append(gen)
    return texts, gens, walls


def _fitting_first_turn(target: Target, questions: list[Question]) -> str | None:
    """The first turn of the first question that fits the context, for the warm-up (None when none does)."""
    for question in questions:
        if len(chat.render(target.tokenizer, [{"role": "user", "content": question.turns[0]}])) < target.max_len:
            return question.turns[0]
    return None


def warm_up(plan: Plan, target: Target, decoder: TurnDecoder, questions: list[Question],
            stops: frozenset[int], sampling: SamplingParams) -> None:
    """plan.warmup untimed generations before a cell, on the first question that fits the context."""
    text = _fitting_first_turn(target, questions)
    for _ in range(plan.warmup if text is not None else 0):
        _warm_up(plan, target, decoder, text, stops, sampling)


def _warm_up(plan: Plan, target: Target, decoder: TurnDecoder, text: str, stops: frozenset[int],
             sampling: SamplingParams) -> None:
    """Untimed generations before a cell. Under --compile they also build every graph the timed ones
    need: the tree sizes seen at the first windows of the target's cache, and a prompt long enough to
    reach a second window, after which the compiler's dynamic-shape graphs cover the rest."""
    prompt = chat.render(target.tokenizer, [{"role": "user", "content": text}])
    rng = torch.Generator().manual_seed(plan.seed)
    budget = min(plan.max_new_tokens, WARMUP_MAX_NEW_TOKENS)
    gen = decoder.decode_turn(prompt, max_new_tokens=budget, stop_ids=stops, sampling=sampling, rng=rng)
    if target.compile_mode == "off":
        return
    target.warm_up_fixed_shapes(set(gen.tree_sizes))
    repeats = target.bucket // max(len(prompt), 1) + 2
    long_prompt = chat.render(target.tokenizer, [{"role": "user", "content": " ".join([text] * repeats)}])
    if len(long_prompt) + 2 * budget < target.max_len:
        decoder.decode_turn(long_prompt, max_new_tokens=budget, stop_ids=stops, sampling=sampling, rng=rng)


def _first(questions: list[Question], limit: int | None, per_task: bool) -> list[Question]:
    """The first ``limit`` questions, or the first ``limit`` of each task, in file order: a subset
    that spans every task instead of the file's first task only. A suite of one task (MT-bench) is
    spanned by its categories instead, so its subset is not all of its first category."""
    if limit is None or not per_task:
        return questions[:limit]
    one_task = len({q.group for q in questions}) == 1
    taken: Counter[str] = Counter()
    kept = []
    for question in questions:
        label = question.category if one_task else question.group
        if taken[label] < limit:
            taken[label] += 1
            kept.append(question)
    return kept


def _seed(seed: int, suite: str, question_id: str, turn: int) -> int:
    """A per-question, per-turn seed, so a resumed or reordered run draws the same samples."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{suite}:{question_id}:{turn}".encode()).digest()[:7], "big")


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(text).name or text)[:60]
