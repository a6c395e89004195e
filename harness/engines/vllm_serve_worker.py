"""Run inside the engines venv: vLLM's async engine serving a suite's prompts at several concurrency levels.

Reads a JSON job from argv[1], writes a JSON result to argv[2]. At concurrency c, c clients each send
their next prompt as soon as their previous answer is complete (closed loop) until every prompt is
answered; each request is streamed, so its first token's arrival (TTFT) and its end are timed at the
client. Spec-decode counters are differences of vLLM's cumulative counters around each level.
Job keys: model, spec (speculative_config or null), prompts (lists of ids), max_tokens, stop_ids,
max_model_len, dtype, concurrency (list of ints).
"""
from __future__ import annotations

import asyncio
import json
import sys
import time

from vllm_worker import counters, difference


async def one_level(engine, prompts: list, params, concurrency: int, tag: str) -> tuple[list[dict], float]:
    from vllm.inputs import TokensPrompt

    queue: asyncio.Queue = asyncio.Queue()
    for index, ids in enumerate(prompts):
        queue.put_nowait((index, ids))
    records: list[dict] = []

    async def client() -> None:
        while not queue.empty():
            index, ids = queue.get_nowait()
            start, first, final = time.perf_counter(), None, None
            async for out in engine.generate(TokensPrompt(prompt_token_ids=ids), params, request_id=f"{tag}-{index}"):
                if first is None and out.outputs[0].token_ids:
                    first = time.perf_counter()
                final = out
            end = time.perf_counter()
            records.append({"index": index, "tokens": list(final.outputs[0].token_ids), "start": start,
                            "ttft_s": (first or end) - start, "latency_s": end - start})

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    wall = time.perf_counter() - started
    for record in records:
        record["start"] -= started
    return sorted(records, key=lambda r: r["index"]), wall


async def serve(job: dict) -> dict:
    from vllm import SamplingParams
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM
    from vllm.v1.metrics.reader import get_metrics_snapshot

    started = time.perf_counter()
    engine = AsyncLLM.from_engine_args(AsyncEngineArgs(
        model=job["model"], dtype=job["dtype"], max_model_len=job["max_model_len"], enforce_eager=True,
        speculative_config=job["spec"], disable_log_stats=False, seed=0, max_num_seqs=max(job["concurrency"])))
    load_s = time.perf_counter() - started
    try:
        params = SamplingParams(temperature=0.0, max_tokens=job["max_tokens"], stop_token_ids=job["stop_ids"],
                                detokenize=False)
        await one_level(engine, job["prompts"][:1], SamplingParams(temperature=0.0, max_tokens=8, detokenize=False),
                        1, "warmup")
        levels = []
        for concurrency in job["concurrency"]:
            before = counters(get_metrics_snapshot())
            records, wall = await one_level(engine, job["prompts"], params, concurrency, f"c{concurrency}")
            levels.append({"concurrency": concurrency, "wall_s": wall, "records": records,
                           "counters": difference(counters(get_metrics_snapshot()), before)})
    finally:
        engine.shutdown()
    return {"load_s": load_s, "levels": levels}


def main() -> None:
    job = json.loads(open(sys.argv[1]).read())
    result = asyncio.run(serve(job))
    with open(sys.argv[2], "w") as handle:
        json.dump(result, handle)


if __name__ == "__main__":
    main()
