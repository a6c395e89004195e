"""Command line: ``python -m harness run | list | suites``.

User mistakes (unknown names, missing data, bad settings) end with one line on stderr and exit
code 2, never a traceback; an interrupted sweep says how to resume it. A sweep in which a method
labelled lossless lost vanilla's text at T = 0 prints its table, then one line per failing cell, and
exits with code 3.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from harness import report
from harness.report import curves
from harness.train import heldout
from harness.errors import LosslessFailure, UserError
from harness.static_shapes import COMPILE_MODES


def _csv(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in _csv(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from exc


def _method_values(pairs: list[str], what: str) -> dict:
    """'method.key=value' (options) or 'method=value' (checkpoints) into nested dicts."""
    out: dict = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise UserError(f"{what} {pair!r} must look like {'method.key=value' if what == '--opt' else 'method=path'}")
        if what == "--opt":
            method, dot, option = key.partition(".")
            if not dot:
                raise UserError(f"--opt {pair!r} must name the method: method.key=value")
            try:
                parsed = json.loads(value)
            except json.JSONDecodeError:
                parsed = value
            out.setdefault(method, {})[option] = parsed
        else:
            if key in out and out[key] != value:
                raise UserError(f"--checkpoint {key} is given twice ({out[key]} and {value}): keep one")
            out[key] = value
    return out


def _add_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="sweep methods x suites x temperatures into result files")
    p.add_argument("--methods", type=_csv, required=True, help="comma-separated method names (see `list`)")
    p.add_argument("--suite", "--suites", dest="suites", type=_csv, default=("specbench",))
    p.add_argument("--target", default=None, help="alias, hub id, local HF directory or .gguf file "
                                                  "(default: $HARNESS_TARGET or smollm2-135m)")
    p.add_argument("--temperature", type=_floats, default=(0.0,), help="comma-separated, e.g. 0,1")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--limit", type=int, default=None, help="first N questions of each suite")
    p.add_argument("--per-task", action="store_true",
                   help="--limit counts per task (Spec-Bench's six tasks, MT-bench's eight categories)")
    p.add_argument("--categories", type=_csv, default=None, help="suite tasks or categories to keep")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="run directory (default: results/<target>-<settings hash>)")
    p.add_argument("--data-dir", type=Path, default=None, help="local benchmark data (default: $HARNESS_DATA_DIR)")
    p.add_argument("--opt", action="append", default=[], help="method option, e.g. pld.num_draft=8 (repeatable)")
    p.add_argument("--checkpoint", action="append", default=[], help="method=path of a draft checkpoint")
    p.add_argument("--warmup", type=int, default=1, help="untimed warm-up generations per cell")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--device", default="auto")
    p.add_argument("--max-len", type=int, default=None, help="KV cache size (default: the target's context)")
    p.add_argument("--compile", default="off", choices=COMPILE_MODES,
                   help="fixed-shape tree forwards: static (eager, padded) or a torch.compile mode; "
                        "reduce-overhead records CUDA graphs on a GPU")
    p.add_argument("--compile-bucket", type=int, default=256, help="attention window granularity for --compile")
    p.add_argument("--allow-code-exec", action="store_true", help="score suites that execute model output")
    p.add_argument("--stack", choices=("harness", "vllm"), default="harness",
                   help="harness: this harness's decoding loop (batch 1); vllm: serve the prompts with vLLM "
                        "(the engines venv, make engines) at each --concurrency")
    p.add_argument("--concurrency", type=_csv, default=("1",), help="--stack vllm: concurrent clients, e.g. 1,2,4")
    p.add_argument("--device-map", choices=("auto", "balanced"), default=None,
                   help="spread the target's layers over the visible GPUs (accelerate)")
    p.add_argument("--workers", type=int, default=None,
                   help="run questions on N Ray workers, one device each (needs pip install -e '.[cluster]')")
    p.add_argument("--cluster", default=None, help="address of a running Ray cluster (default: start Ray here)")
    p.add_argument("--replay", action="store_true",
                   help="replay every method but the baseline along its answers: exact accept lengths at T = 0, "
                        "exact in distribution at T > 0 (no timing; cells <method>-replay); see docs/reports.md#replay")


def _run(args: argparse.Namespace, argv: list[str]) -> None:
    from harness import metrics, runner
    from harness.records import baseline_of, iter_result_files

    if args.stack == "vllm":
        return _serve(args, argv)
    if args.cluster and not args.workers:
        raise UserError("--cluster needs --workers N (how many workers to run on it)")
    plan = runner.Plan(
        methods=args.methods, suites=args.suites, temperatures=args.temperature, target=args.target,
        max_new_tokens=args.max_new_tokens, limit=args.limit, per_task=args.per_task, categories=args.categories,
        seed=args.seed, top_p=args.top_p, top_k=args.top_k, out=args.out, data_dir=args.data_dir,
        options=_method_values(args.opt, "--opt"), checkpoints=_method_values(args.checkpoint, "--checkpoint"),
        warmup=args.warmup, dtype=args.dtype, device=args.device, max_len=args.max_len,
        compile=args.compile, compile_bucket=args.compile_bucket, allow_code_exec=args.allow_code_exec,
        device_map=args.device_map, workers=args.workers, cluster=args.cluster, replay=args.replay)
    try:
        run_dir = runner.run(plan, argv)
    except torch.OutOfMemoryError as exc:
        raise UserError("out of memory; finished questions are saved: lower --max-new-tokens or --max-len, "
                        "then rerun the same command to resume") from exc
    manifest = json.loads((run_dir / "manifest.json").read_text())
    frame = metrics.load_frame(iter_result_files([run_dir]), baseline=baseline_of(manifest))
    summary = metrics.summarize(frame)
    print(f"results: {run_dir}")
    print(metrics.format_summary(summary))
    if "contended" in summary.columns:
        print("note: the contended column counts questions timed while other processes shared the machine; "
              "their speedups are not clean timings (README, Clean timings)")
    if not frame.empty:
        print(metrics.format_paired(metrics.paired(frame, ["suite", "temperature"])))
    failures = metrics.lossless_failures(summary)
    if failures:
        raise LosslessFailure("\n".join(failures))


def _serve(args: argparse.Namespace, argv: list[str]) -> None:
    from harness.engines import serving

    if args.temperature != (0.0,) or len(args.suites) != 1:
        raise UserError("--stack vllm runs one suite at --temperature 0")
    try:
        concurrency = tuple(int(c) for c in args.concurrency)
    except ValueError as exc:
        raise UserError(f"--concurrency takes integers, e.g. 1,2,4: {exc}") from None
    suite = args.suites[0]
    out = args.out or Path("results") / f"vllm-{suite}-{args.max_new_tokens}"
    plan = serving.ServePlan(methods=args.methods, suite=suite, concurrency=concurrency, out=out, target=args.target,
                             limit=args.limit, max_new_tokens=args.max_new_tokens,
                             options=_method_values(args.opt, "--opt"),
                             checkpoints=_method_values(args.checkpoint, "--checkpoint"), data_dir=args.data_dir)
    run_dir = serving.run(plan, argv)
    print(f"results: {run_dir}")
    print(serving.format_cells(serving.read_cells(run_dir)))


def _add_datagen(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("datagen", help="self-distillation data: the target answers training prompts")
    p.add_argument("--target", default=None)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--prompts", type=_csv, default=("sharegpt", "codegen", "roleplay", "gsm8k"),
                   help="prompt sources: sharegpt, codegen, roleplay, gsm8k")
    p.add_argument("--max-samples", type=int, default=512)
    p.add_argument("--max-prompt-tokens", type=int, default=256)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", type=Path, default=None)
    p.add_argument("--feature-layers", type=_csv, default=(),
                   help="also store these decoder layers' inputs, concatenated (EAGLE-3: "
                        "'eagle3' = layers 2, N//2, N-3 of an N-layer target)")
    p.add_argument("--topk-logprobs", type=int, default=0, metavar="K",
                   help="also store the target's K most likely next tokens and their log-probs at every position "
                        "(training then skips the target's LM head; EAGLE-2, HASS, FSPAD, CORAL)")
    p.add_argument("--answers", type=Path, default=None,
                   help="folder of the answers alone, reused when present (default: OUT/answers); the committed "
                        "checkpoints/smollm2-135m/datagen-answers rebuilds the SmolLM2 data without generating")
    p.add_argument("--workers", type=int, default=None,
                   help="make shards on N Ray workers, one device each (needs pip install -e '.[cluster]')")
    p.add_argument("--cluster", default=None, help="address of a running Ray cluster (default: start Ray here)")


def _datagen(args: argparse.Namespace, argv: list[str]) -> None:
    from harness.train import datagen

    config = datagen.DatagenConfig(
        target=args.target, out=args.out, sources=args.prompts, max_samples=args.max_samples,
        max_prompt_tokens=args.max_prompt_tokens, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
        temperature=args.temperature, seed=args.seed, data_dir=args.data_dir,
        feature_layers=tuple(args.feature_layers), topk_logprobs=args.topk_logprobs, answers=args.answers)
    if args.workers is not None and args.workers < 1:
        raise UserError(f"--workers {args.workers}: must be a positive number of Ray workers")
    if args.cluster and not args.workers:
        raise UserError("--cluster needs --workers N (how many workers to run on it)")
    if args.workers:
        from harness.cluster import require_ray
        require_ray()
    print(f"data: {datagen.run(config, workers=args.workers, cluster=args.cluster)}")


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a learned drafter on datagen output")
    p.add_argument("--method", required=True)
    p.add_argument("--data", type=Path, required=True, help="a datagen folder")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--target", default=None)
    p.add_argument("--preset", choices=("cpu", "gpu"), default=None, help="default: gpu with CUDA, else cpu")
    p.add_argument("--set", action="append", default=[], help="trainer setting, e.g. epochs=3 (repeatable)")
    p.add_argument("--loss", action="append", default=[], help="loss option, e.g. topk_w=0 (repeatable)")
    p.add_argument("--init", type=Path, default=None, help="start from this checkpoint's weights (HASS stage 2)")
    p.add_argument("--passes", type=int, default=None, help="train up to N passes of these settings, each from the "
                   "last, into OUT/pass-NN, until a pass's paired held-out depth-1 gain is not above zero (or "
                   "--min-gain) (harness/train/passes.py)")
    p.add_argument("--min-gain", type=float, default=0.0, help="with --passes: a pass improves only when its "
                   "depth-1 gain's paired interval lies above this (default 0), e.g. 0.005")


def _train(args: argparse.Namespace, argv: list[str]) -> None:
    import dataclasses

    from harness.learned import learned
    from harness.target import Target
    from harness.train import distributed, trainer
    from harness.train.data import FeatureData

    method = learned(args.method, "train")
    preset = args.preset or ("gpu" if torch.cuda.is_available() else "cpu")
    config = dataclasses.replace(trainer.PRESETS[preset], **_key_values(args.set, trainer.TrainConfig))
    loss = {key: value for key, value in (_key_value(pair) for pair in args.loss)}
    method.loss_config(**loss)   # unknown loss options fail before anything loads
    group = distributed.start()   # under torchrun: one rank of a data-parallel run
    if args.passes is not None and (group is not None or args.passes < 1):
        raise UserError("--passes takes a count of 1 or more and runs in one process (not under torchrun)")
    if args.min_gain and (args.passes is None or not 0 <= args.min_gain < 1):
        raise UserError("--min-gain takes a top-1 gain in [0, 1) and needs --passes")
    target = Target.load(args.target, dtype="float32" if preset == "cpu" else "auto",
                         device=group.device if group else "auto")
    data = FeatureData(args.data, max_len=config.max_len, max_samples=config.max_samples)
    if args.passes is not None:
        from harness.train import passes
        passes.run(method, target, data, args.out, config, loss, args.init, args.passes, args.min_gain)
        print(f"passes: {args.out / 'passes.md'}")
        return
    out = trainer.train(method, target, data, args.out, config, loss, init=args.init)
    if group is None or group.main:
        print(f"checkpoint: {out}")
    if group is not None:
        torch.distributed.destroy_process_group()


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write a draft checkpoint in the EAGLE layout for the EAGLE repo, vLLM or SGLang")
    p.add_argument("--method", required=True)
    p.add_argument("--checkpoint", required=True, help="a harness (or released EAGLE-layout) checkpoint folder")
    p.add_argument("--format", choices=("eagle", "vllm", "sglang"), default="eagle")
    p.add_argument("--target", default=None)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--dtype", choices=("float16", "bfloat16", "float32"), default="float16",
                   help="weights as written (engines cast them to the served dtype)")


def _export(args: argparse.Namespace, argv: list[str]) -> None:
    from harness.learned import learned
    from harness.target import Target

    method = learned(args.method, "export")
    target = Target.load(args.target)
    net = method.load_net(target, args.checkpoint)
    print(f"exported: {method.export(net, target, args.out, args.format, getattr(torch, args.dtype))}")


def _add_engine_check(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("engine-check", help="export a draft, run it in vLLM (chain of k drafts, T=0) and compare "
                                            "vLLM's acceptance counters and texts with the harness's")
    p.add_argument("--method", required=True, help="eagle2, hass, coral, eagle3 or medusa (--k = its heads)")
    p.add_argument("--engine", choices=("vllm",), default="vllm")
    p.add_argument("--checkpoint", default=None, help="default: the committed draft for the target")
    p.add_argument("--target", default=None)
    p.add_argument("--suite", default="mtbench")
    p.add_argument("--prompts", type=int, default=10, help="first N questions' first turns")
    p.add_argument("--k", type=int, default=3, help="draft tokens per step")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--tolerance", type=float, default=0.05, help="allowed difference in mean acceptance length")
    p.add_argument("--data-dir", type=Path, default=None)
    p.add_argument("--keep-export", type=Path, default=None, help="write the export here instead of a temp folder")


def _engine_check(args: argparse.Namespace, argv: list[str]) -> None:
    from harness.engines import check

    check.run(check.CheckConfig(method=args.method, checkpoint=args.checkpoint, target=args.target, suite=args.suite,
                                prompts=args.prompts, k=args.k, max_new_tokens=args.max_new_tokens,
                                tolerance=args.tolerance, data_dir=args.data_dir, keep=args.keep_export))


def _key_value(pair: str) -> tuple[str, object]:
    key, sep, value = pair.partition("=")
    if not sep:
        raise UserError(f"{pair!r} must look like key=value")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _key_values(pairs: list[str], config_type: type) -> dict:
    import dataclasses

    fields = {f.name for f in dataclasses.fields(config_type)}
    values = dict(_key_value(pair) for pair in pairs)
    unknown = sorted(set(values) - fields)
    if unknown:
        raise UserError(f"unknown setting {', '.join(unknown)} (valid: {', '.join(sorted(fields))})")
    return values


def _list(args: argparse.Namespace, argv: list[str]) -> None:
    from harness.drafter import METHODS
    from harness.suite import SUITES

    width = max(map(len, METHODS.names() + SUITES.names()))
    print("methods:")
    for name in METHODS.names():
        cls = METHODS.get(name)
        aliases = METHODS.aliases(name)
        print(f"  {name:<{width}} {cls.summary}" + (f"  (aliases: {', '.join(aliases)})" if aliases else ""))
    print("suites:")
    for name in SUITES.names():
        print(f"  {name:<{width}} {(SUITES.get(name).__doc__ or '').strip().splitlines()[0]}")


def _suites(args: argparse.Namespace, argv: list[str]) -> None:
    from harness.suite import describe_suites

    for row in describe_suites(args.data_dir):
        if row["questions"] is None:
            print(f"{row['name']:<11} unavailable: {row['error']}")
            continue
        unsafe = "  [executes model output when scored]" if row["unsafe"] else ""
        tasks = ", ".join(f"{t} {n}" for t, n in row["tasks"].items())
        print(f"{row['name']:<11} {row['questions']:>5} questions: {tasks}{unsafe}")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="harness", description="lossless speculative decoding harness")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_run(sub)
    _add_datagen(sub)
    _add_train(sub)
    _add_export(sub)
    _add_engine_check(sub)
    report_parser = sub.add_parser("report", help="tables, plots and paper tables from result folders")
    report.add_arguments(report_parser)
    curves.add_arguments(sub.add_parser("curves", help="learning curves of trained drafts: table, plot, goal check"))
    heldout.add_arguments(sub.add_parser("heldout", help="trained drafts' held-out top-1 per sample: intervals, "
                                         "paired gains between checkpoints"))
    sub.add_parser("list", help="registered methods and suites")
    suites_parser = sub.add_parser("suites", help="every suite with its record counts from the resolved data")
    suites_parser.add_argument("--data-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    handlers = {"run": _run, "list": _list, "datagen": _datagen, "train": _train,
                "export": _export, "engine-check": _engine_check, "report": lambda args, argv: report.run(args),
                "curves": lambda args, argv: curves.run(args), "heldout": lambda args, argv: heldout.run(args),
                "suites": _suites}
    try:
        handlers[args.command](args, argv)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except LosslessFailure as exc:
        print(exc, file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("interrupted: finished questions are saved; rerun the same command to resume", file=sys.stderr)
        return 130
    return 0
