"""Run inside the engines venv (vLLM installed, the harness not): one offline vLLM engine, one job.

Reads a JSON job from argv[1] and writes a JSON result to argv[2]. Prompts go in as token ids and
come back as token ids, so tokenisation cannot differ from the harness's. The spec-decode counters
are vLLM's own (``LLM.get_metrics()``), read before and after the timed requests.
Job keys: model, draft (or null), method ("eagle" | "eagle3" | "medusa"), k, prompts (lists of ids),
max_tokens, stop_ids, max_model_len, dtype, concurrency (list; 0 = all prompts in one batch).
"""
from __future__ import annotations

import json
import sys
import time

COUNTERS = ("vllm:spec_decode_num_drafts", "vllm:spec_decode_num_draft_tokens",
            "vllm:spec_decode_num_accepted_tokens")
PER_POSITION = "vllm:spec_decode_num_accepted_tokens_per_pos"


def counters(metrics: list) -> dict:
    """Cumulative spec-decode counters from vLLM's metrics (absent before the first speculative step: zeros)."""
    found = {name: 0 for name in COUNTERS}
    found[PER_POSITION] = []
    for metric in metrics:
        if metric.name in COUNTERS:
            found[metric.name] = int(metric.value)
        elif metric.name == PER_POSITION:
            found[PER_POSITION] = [int(v) for v in metric.values]
    return found


def difference(after: dict, before: dict) -> dict:
    out = {name: after[name] - before[name] for name in COUNTERS}
    previous = before[PER_POSITION] or [0] * len(after[PER_POSITION])
    out[PER_POSITION] = [a - b for a, b in zip(after[PER_POSITION], previous)]
    return out


def main() -> None:
    job = json.loads(open(sys.argv[1]).read())
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    spec = None
    if job.get("draft"):
        spec = {"method": job["method"], "model": job["draft"], "num_speculative_tokens": job["k"]}
    started = time.perf_counter()
    llm = LLM(model=job["model"], dtype=job["dtype"], max_model_len=job["max_model_len"], enforce_eager=True,
              speculative_config=spec, disable_log_stats=False, seed=0, max_num_seqs=max(job.get("concurrency", [1])))
    load_s = time.perf_counter() - started
    params = SamplingParams(temperature=0.0, max_tokens=job["max_tokens"], stop_token_ids=job["stop_ids"],
                            ignore_eos=False, detokenize=False)
    prompts = [TokensPrompt(prompt_token_ids=ids) for ids in job["prompts"]]
    llm.generate(prompts[:1], SamplingParams(temperature=0.0, max_tokens=8, detokenize=False), use_tqdm=False)
    before = counters(llm.get_metrics())
    outputs, started = [], time.perf_counter()
    for prompt in prompts:       # one request at a time: batch size 1, as the harness decodes
        outputs.extend(llm.generate([prompt], params, use_tqdm=False))
    wall = time.perf_counter() - started
    result = {"load_s": load_s, "wall_s": wall, "counters": difference(counters(llm.get_metrics()), before),
              "tokens": [list(out.outputs[0].token_ids) for out in outputs]}
    with open(sys.argv[2], "w") as handle:
        json.dump(result, handle)


if __name__ == "__main__":
    main()
