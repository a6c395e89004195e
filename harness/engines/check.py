"""``harness engine-check``: an exported draft run by vLLM, beside the harness's own chain-mode numbers.

Both sides decode the same chat prompts (as token ids) greedily with a chain of k draft tokens: vLLM
with ``speculative_config={"method": "eagle", "model": EXPORT, "num_speculative_tokens": k}``, the harness
with the same draft as a chain tree (``total_tokens=k+1``, ``top_k=1``, ``depth=k-1``; Medusa: vLLM's
``"medusa"`` method, which drafts every head's argmax, against the harness's chain ``choices``
[[0], [0, 0], ...] with k = the number of heads). Both count the
same way: a draft is one verification step, accepted tokens are counted before any cut at a stop token or
the token budget (vLLM's scheduler counts them so), and the mean acceptance length is
1 + accepted / drafts. The texts must be identical (both are exact at T = 0) and the two mean
acceptance lengths equal within ``tolerance``; anything else is an error.
"""
from __future__ import annotations

import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from harness import chat
from harness.decode import generate
from harness.drafter import METHODS
from harness.learned import learned
from harness.engines import venv
from harness.errors import UserError
from harness.loading import converted_gguf
from harness.sampling import SamplingParams
from harness.suite import SUITES, load_questions
from harness.target import Target

WORKER = Path(__file__).with_name("vllm_worker.py")
# method -> (the harness method whose drafting the export reproduces, vLLM's method name)
ENGINE_METHODS = {"eagle2": ("eagle2", "eagle"), "hass": ("hass", "eagle"),
                  "coral": ("coral-fullhead", "eagle"),   # no engine has CORAL's grouped head: the body only
                  "medusa": ("medusa", "medusa"),         # vLLM drafts every head's argmax: k = the heads
                  "eagle3": ("eagle3", "eagle3")}         # llama_eagle3.py: draft-vocabulary argmax via d2t


@dataclass
class ChainStats:
    """Spec-decode counters in vLLM's terms."""
    drafts: int = 0
    draft_tokens: int = 0
    accepted: int = 0
    per_position: list[int] = field(default_factory=list)

    @property
    def mean_acceptance_length(self) -> float:
        return 1 + self.accepted / self.drafts if self.drafts else float("nan")

    def position_rates(self) -> list[float]:
        return [n / self.drafts if self.drafts else float("nan") for n in self.per_position]


@dataclass(frozen=True)
class CheckConfig:
    method: str
    checkpoint: str | None = None
    target: str | None = None
    suite: str = "mtbench"
    prompts: int = 10
    k: int = 3
    max_new_tokens: int = 128
    tolerance: float = 0.05
    data_dir: Path | None = None
    keep: Path | None = None     # keep the export here (default: a temporary folder)


def chain_options(method: str, k: int) -> dict:
    """The harness options that make ``method`` draft vLLM's chain of k tokens."""
    if method == "medusa":
        return {"choices": [[0] * depth for depth in range(1, k + 1)]}
    return {"total_tokens": k + 1, "top_k": 1, "depth": k - 1}


def run(config: CheckConfig) -> dict:
    """Export, run both sides, print the comparison; a UserError when they disagree."""
    if config.method not in ENGINE_METHODS:
        raise UserError(f"engine-check covers {', '.join(ENGINE_METHODS)}; {config.method!r} has no EAGLE export "
                        f"that vLLM runs")
    if config.k < 1 or config.prompts < 1:
        raise UserError("--k and --prompts must be at least 1")
    interpreter = venv.python()
    version = venv.vllm_version(interpreter)
    harness_method, engine_method = ENGINE_METHODS[config.method]
    target = Target.load(config.target, dtype="float32", device="cpu")
    prompts = first_turns(target, config)
    stops = chat.stop_ids(target.tokenizer, getattr(target.model, "generation_config", None))
    with tempfile.TemporaryDirectory() as scratch:
        export_dir = config.keep or Path(scratch) / "draft"
        method = learned(config.method, "export")
        method.export(method.load_net(target, config.checkpoint), target, export_dir, "vllm", torch.float32)
        engine = venv.run_worker(interpreter, WORKER, {
            "model": str(hf_folder(target)), "draft": str(export_dir), "method": engine_method, "k": config.k,
            "prompts": [p.tolist() for p in prompts], "max_tokens": config.max_new_tokens,
            "stop_ids": sorted(stops), "max_model_len": 2048, "dtype": "float32"}, Path(scratch))
    print(f"vLLM: engine start {engine['load_s']:.0f} s, {len(prompts)} prompts in {engine['wall_s']:.0f} s",
          file=sys.stderr)
    ours, texts = harness_chain(target, harness_method, config, prompts, stops)
    theirs = ChainStats(*(engine["counters"][f"vllm:spec_decode_{name}"] for name in
                          ("num_drafts", "num_draft_tokens", "num_accepted_tokens", "num_accepted_tokens_per_pos")))
    same = sum(cut(a, stops) == cut(b, stops) for a, b in zip(texts, engine["tokens"]))
    summary = {"method": config.method, "harness_method": harness_method, "vllm": version, "k": config.k,
               "prompts": len(prompts), "suite": config.suite, "max_new_tokens": config.max_new_tokens,
               "vllm_mal": theirs.mean_acceptance_length, "harness_mal": ours.mean_acceptance_length,
               "vllm_counters": theirs.__dict__, "harness_counters": ours.__dict__, "identical_texts": same,
               "vllm_wall_s": engine["wall_s"]}
    print(format_table(summary, theirs, ours))
    problems = []
    if same != len(prompts):
        problems.append(f"{len(prompts) - same} of {len(prompts)} texts differ between vLLM and the harness")
    if not abs(theirs.mean_acceptance_length - ours.mean_acceptance_length) <= config.tolerance:
        problems.append(f"mean acceptance length {theirs.mean_acceptance_length:.3f} (vLLM) vs "
                        f"{ours.mean_acceptance_length:.3f} (harness) differ by more than {config.tolerance}")
    if problems:
        raise UserError("engine check failed: " + "; ".join(problems))
    return summary


def first_turns(target: Target, config: CheckConfig) -> list[torch.Tensor]:
    suite = SUITES.get(config.suite)(data_dir=config.data_dir)
    questions = load_questions(suite)[: config.prompts]
    return [chat.render(target.tokenizer, [{"role": "user", "content": q.turns[0]}]) for q in questions]


def hf_folder(target: Target) -> Path:
    """The Hugging Face folder vLLM loads: the harness's converted cache for GGUF targets, else the spec's
    own folder."""
    marker = " (cached as "
    if marker in target.source:
        return Path(target.source.split(marker, 1)[1].rstrip(")"))
    if Path(target.source).is_dir():
        return Path(target.source)
    if target.source.endswith(".gguf"):
        return converted_gguf(Path(target.source))
    raise UserError(f"engine-check needs the target as a local folder or GGUF file, not {target.source!r}")


def harness_chain(target: Target, method: str, config: CheckConfig, prompts: list[torch.Tensor],
                  stops: frozenset[int]) -> tuple[ChainStats, list[list[int]]]:
    """The harness's chain-mode decoding of the same prompts, counted as vLLM counts."""
    drafter = METHODS.get(method)(target, checkpoint=config.checkpoint, **chain_options(method, config.k))
    verifier = drafter.verifier()
    stats = ChainStats(per_position=[0] * config.k)
    verify = verifier.verify

    def counted(tree, logits, sampling, rng):
        verdict = verify(tree, logits, sampling, rng)
        stats.drafts += 1
        stats.draft_tokens += tree.size - 1
        stats.accepted += verdict.accepted
        for position in range(verdict.accepted):
            stats.per_position[position] += 1
        return verdict

    verifier.verify = counted
    texts = []
    for prompt in prompts:
        gen = generate(target, drafter, verifier, prompt, max_new_tokens=config.max_new_tokens, stop_ids=stops,
                       sampling=SamplingParams(), rng=torch.Generator().manual_seed(0))
        texts.append(gen.tokens)
    return stats, texts


def cut(tokens: list[int], stops: frozenset[int]) -> list[int]:
    """Tokens before the first stop token (engines differ on whether they return it)."""
    for i, token in enumerate(tokens):
        if token in stops:
            return tokens[:i]
    return list(tokens)


def format_table(summary: dict, theirs: ChainStats, ours: ChainStats) -> str:
    rows = [("mean acceptance length", f"{theirs.mean_acceptance_length:.3f}", f"{ours.mean_acceptance_length:.3f}"),
            ("drafts (verification steps)", str(theirs.drafts), str(ours.drafts)),
            ("draft tokens", str(theirs.draft_tokens), str(ours.draft_tokens)),
            ("accepted tokens", str(theirs.accepted), str(ours.accepted)),
            ("acceptance by position", " ".join(f"{r:.3f}" for r in theirs.position_rates()),
             " ".join(f"{r:.3f}" for r in ours.position_rates()))]
    head = (f"engine check: {summary['method']} (harness {summary['harness_method']}, chain k={summary['k']}) on "
            f"{summary['prompts']} {summary['suite']} prompts, T=0, {summary['max_new_tokens']} new tokens")
    width = max(len(r[0]) for r in rows)
    lines = [head, f"{'':{width}}  {'vLLM ' + summary['vllm']:>24}  {'harness':>24}"]
    lines += [f"{name:{width}}  {a:>24}  {b:>24}" for name, a, b in rows]
    lines.append(f"identical texts: {summary['identical_texts']} of {summary['prompts']}")
    return "\n".join(lines)
