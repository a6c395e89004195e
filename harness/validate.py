"""Every check a sweep can make before it does any work, so a bad input costs seconds, not a cell.

Two passes, because some facts exist only once the target is loaded. ``before_load``: names and
their aliases in ``--opt`` and ``--checkpoint``, checkpoint files, sampling settings, device,
output folder and data files. ``after_load``: ``--max-len`` against the model's context, the run
folder's manifest, the answers it already holds against today's question texts, and every draft
built from its checkpoint. Nothing here writes, so a refused command leaves ``--out`` as it was
and the corrected command runs into it. Each failure is one UserError line that names the flag,
file or value and says how to fix it.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import SafetensorError, safe_open

from harness import sandbox
from harness.decode import TurnDecoder
from harness.learned import LearnedDrafter
from harness.method import METHODS, Method, parse_options
from harness.errors import UserError
from harness.records import read_rows
from harness.sampling import SamplingParams
from harness.suite import SUITES, Question, Suite, load_questions
from harness.target import Target

if TYPE_CHECKING:
    from harness.runner import Plan

RANDOM_CHECKPOINT = "random"   # builds an untrained draft (tests, smoke runs)
DEVICE_MAPS = ("auto", "balanced")   # accelerate's placements of a target across the visible GPUs


@dataclass(frozen=True)
class Checked:
    plan: "Plan"                           # method aliases resolved in methods, options and checkpoints
    methods: list[str]                     # canonical names, the baseline first
    suites: dict[str, Suite]
    questions: dict[str, list[Question]]   # each suite's questions, checked, --categories kept, before --limit


def before_load(plan: "Plan") -> Checked:
    """All that needs no model: run it before the target loads."""
    _check_numbers(plan)
    if not plan.workers:    # Ray workers check the device they get (the driver may have no GPU)
        check_device(plan.device)
    if plan.device_map is not None and plan.device_map not in DEVICE_MAPS:
        raise UserError(f"--device-map {plan.device_map!r}: use {' or '.join(DEVICE_MAPS)}")
    if plan.device_map is not None and plan.device not in ("auto", "cuda"):
        raise UserError(f"--device-map places the target itself: leave --device at auto, not {plan.device}")
    baseline = METHODS.get(plan.baseline).name
    methods = [baseline] + [m for m in dict.fromkeys(METHODS.get(m).name for m in plan.methods) if m != baseline]
    options = _options_by_method(plan.options, methods)
    checkpoints = _checkpoints_by_method(plan.checkpoints, methods)
    for method, path in checkpoints.items():
        if path != RANDOM_CHECKPOINT:
            check_checkpoint_files(method, Path(path))
    if plan.out is not None:
        check_out(plan.out)
    if plan.allow_code_exec and any(SUITES.get(name).unsafe for name in plan.suites):
        sandbox.require_sandbox()   # without a working bubblewrap nothing could be scored
    suites = {name: SUITES.get(name)(data_dir=plan.data_dir) for name in plan.suites}
    questions = {name: load_questions(suite, plan.categories) for name, suite in suites.items()}
    plan = dataclasses.replace(plan, methods=tuple(methods), options=options, checkpoints=checkpoints)
    return Checked(plan=plan, methods=methods, suites=suites, questions=questions)


def after_load(checked: Checked, target: Target, run_dir: Path) -> dict[str, TurnDecoder]:
    """What needs the loaded target; returns every method's turn decoder, built and ready."""
    check_context(checked.plan, target)
    check_run_dir(checked, run_dir)
    return build_decoders(checked, target)


def check_context(plan: "Plan", target: Target) -> None:
    """--max-len against the model's context."""
    context = getattr(target.config, "max_position_embeddings", None)
    if plan.max_len is not None and context and plan.max_len > context:
        raise UserError(f"--max-len {plan.max_len} is above the context of {target.model_id} ({context} tokens, "
                        f"max_position_embeddings in its config.json): pass at most {context}, or leave it out")


def check_run_dir(checked: Checked, run_dir: Path) -> None:
    """The run folder, and the answers it already holds against today's question texts."""
    check_out(run_dir)
    for name, questions in checked.questions.items():
        check_recorded_texts(run_dir, name, questions)


def build_decoders(checked: Checked, target: Target) -> dict[str, TurnDecoder]:
    """Every method's turn decoder on this target, the baseline first (a Ray worker builds its own)."""
    plan = checked.plan
    return {method: build_method(method, target, plan.checkpoints.get(method),
                                 plan.options.get(method, {})).turn_decoder() for method in checked.methods}


def _check_numbers(plan: "Plan") -> None:
    for temperature in plan.temperatures:
        if not (math.isfinite(temperature) and temperature >= 0):
            raise UserError(f"--temperature {temperature}: must be a finite number >= 0 (0 decodes greedily)")
    if not (math.isfinite(plan.top_p) and 0 < plan.top_p <= 1):
        raise UserError(f"--top-p {plan.top_p}: must be in (0, 1] (1 keeps every token)")
    if plan.top_k < 0:
        raise UserError(f"--top-k {plan.top_k}: must be >= 0 (0 keeps every token)")
    if plan.warmup < 0:
        raise UserError(f"--warmup {plan.warmup}: must be >= 0 (0 skips the untimed warm-up)")
    positive = {"--max-new-tokens": plan.max_new_tokens, "--limit": plan.limit, "--max-len": plan.max_len,
                "--compile-bucket": plan.compile_bucket}
    for flag, value in positive.items():
        if value is not None and value < 1:
            raise UserError(f"{flag} {value}: must be a positive number")
    if plan.workers is not None and plan.workers < 1:
        raise UserError(f"--workers {plan.workers}: must be a positive number of Ray workers")
    for temperature in plan.temperatures:   # the runner's own type agrees
        SamplingParams(temperature, plan.top_p, plan.top_k)


def check_device(device: str) -> None:
    if device == "auto":
        return
    try:
        parsed = torch.device(device)
    except RuntimeError as exc:
        raise UserError(f"--device {device!r} is not a device: use auto, cpu, cuda or cuda:N") from exc
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UserError(f"--device {device}: no CUDA GPU is visible to torch {torch.__version__} here; "
                            f"use --device cpu (or auto)")
        if parsed.index is not None and parsed.index >= count:
            raise UserError(f"--device {device}: this machine has {count} GPU(s), cuda:0 to cuda:{count - 1}")
    elif parsed.type == "mps":
        if not torch.backends.mps.is_available():
            raise UserError(f"--device {device}: Apple's MPS is not available here; use --device cpu (or auto)")
    elif parsed.type != "cpu":
        raise UserError(f"--device {device}: unsupported device type {parsed.type!r} (use auto, cpu, cuda or mps)")


def _options_by_method(given: dict, methods: list[str]) -> dict:
    """``--opt`` keyed by canonical method name; an option set twice through an alias is refused."""
    resolved: dict[str, dict] = {}
    for name, values in given.items():
        method = _in_run(name, methods, "--opt")
        for key, value in values.items():
            if key in resolved.get(method, {}) and resolved[method][key] != value:
                raise UserError(f"--opt {method}.{key} is given twice with different values (through the alias "
                                f"{name!r}): keep one")
            resolved.setdefault(method, {})[key] = value
    for method, values in resolved.items():
        parse_options(METHODS.get(method).Options, values, method)
    return resolved


def _checkpoints_by_method(given: dict, methods: list[str]) -> dict:
    """``--checkpoint`` keyed by canonical method name, for methods that take one."""
    resolved: dict[str, str] = {}
    for name, path in given.items():
        method = _in_run(name, methods, "--checkpoint")
        if not METHODS.get(method).needs_checkpoint:
            raise UserError(f"--checkpoint {name}={path}: method {method!r} takes no checkpoint; drop the flag")
        if method in resolved and resolved[method] != path:
            raise UserError(f"--checkpoint gives {method!r} two checkpoints ({resolved[method]} and {path}, "
                            f"through the alias {name!r}): keep one")
        resolved[method] = path
    return resolved


def _in_run(name: str, methods: list[str], flag: str) -> str:
    method = METHODS.get(name).name
    if method not in methods:
        raise UserError(f"{flag} names {name!r}, which is not among --methods ({', '.join(methods)}): "
                        f"add it to --methods or drop the {flag}")
    return method


def check_checkpoint_files(method: str, where: Path) -> None:
    """A checkpoint folder whose config.json parses and whose safetensors files are whole; which
    method and target it was made for is checked when the draft is built (it needs the target)."""
    flag = f"--checkpoint {method}={where}"
    if not where.is_dir():
        raise UserError(f"{flag}: no such folder; pass a checkpoint folder (config.json and model.safetensors)")
    config = where / "config.json"
    if config.exists():
        try:
            data = json.loads(config.read_text(encoding="utf-8"))
        except (ValueError, OSError) as exc:
            raise UserError(f"{flag}: {config} is not readable JSON ({_first_line(exc)}); restore it from the "
                            f"checkpoint's source or export the checkpoint again") from exc
        if not isinstance(data, dict):
            raise UserError(f"{flag}: {config} must hold a JSON object; restore it from the checkpoint's source")
    for weights in sorted(where.glob("*.safetensors")):
        try:
            with safe_open(str(weights), "pt"):
                pass
        except (SafetensorError, OSError) as exc:
            raise UserError(f"{flag}: {weights} is damaged or truncated ({_first_line(exc)}); copy or export "
                            f"it again") from exc


def build_method(method: str, target: Target, checkpoint: str | None, options: dict) -> Method:
    """The method on this target; a checkpoint that cannot be read becomes one line naming it."""
    cls = METHODS.get(method)
    where = None
    if issubclass(cls, LearnedDrafter) and checkpoint != RANDOM_CHECKPOINT:
        where = Path(checkpoint) if checkpoint else cls.default_checkpoint(target)
        if where.exists():
            check_checkpoint_files(method, where)
    try:
        return cls(target, checkpoint, **options)
    except torch.OutOfMemoryError:
        raise
    except (OSError, ValueError, RuntimeError, KeyError, SafetensorError, pickle.UnpicklingError) as exc:
        if where is None:
            raise
        raise UserError(f"--checkpoint {method}={where}: cannot be loaded for {target.model_id} "
                        f"({_first_line(exc)}); pass a checkpoint made for this method and target") from exc


def check_out(run_dir: Path) -> None:
    """A run folder we can create or resume: not a file, and any manifest in it readable."""
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"--out {run_dir} is a file, not a folder: pass a new folder or a run folder to resume")
    ancestor = next((p for p in (run_dir, *run_dir.parents) if p.exists()), Path("."))
    if not ancestor.is_dir():
        raise UserError(f"--out {run_dir}: {ancestor} is a file, so the folder cannot be made; choose another path")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UserError(f"--out {run_dir}: {ancestor} is not writable; choose another path")
    manifest = run_dir / "manifest.json"
    if not manifest.exists():
        return
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (ValueError, OSError) as exc:
        raise UserError(f"{manifest} is damaged ({_first_line(exc)}): move it (or the whole folder) away, "
                        f"or pass another --out") from exc
    if not (isinstance(data, dict) and isinstance(data.get("settings"), dict)
            and isinstance(data.get("cells"), list) and isinstance(data.get("sweeps"), list)):
        raise UserError(f"{manifest} is not a run manifest (settings, cells, sweeps): move it (or the whole "
                        f"folder) away, or pass another --out")


def check_recorded_texts(run_dir: Path, suite: str, questions: list[Question]) -> None:
    """Refuse to resume answers that were made for another text of the same question id."""
    by_id = {q.id: q for q in questions}
    for path in sorted((run_dir / "answers" / suite).glob("*.jsonl")):
        for row in read_rows(path):
            recorded, question = row.get("question_hash"), by_id.get(str(row.get("question_id")))
            if recorded and question is not None and recorded != question.text_hash:
                raise UserError(f"{path}: the answers to question {question.id} were made for a different text "
                                f"than the data file holds now; pass another --out, or move {path.name} away "
                                f"to answer the new text")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
