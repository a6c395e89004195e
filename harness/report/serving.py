"""The serving section of a report: ``harness run --stack vllm`` folders (serving_cells.jsonl).

Per suite: throughput speedup over vanilla at each concurrency (how much of the batch-1 speedup
survives under load), and one row per (method, concurrency) with throughput, the engine's mean
acceptance length beside the research stack's τ (from any harness runs in the same report), and
TTFT / TPOT / latency percentiles.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from harness.engines.serving import CELLS_FILE, PERCENTILES, read_cells, speedup_rows
from harness.report.render import Section
from harness.report.tables import GAP, Table, num


def find(paths: list[Path]) -> list[Path]:
    """Serving run folders among paths (a path itself, or its children)."""
    found = []
    for path in paths:
        if (path / CELLS_FILE).is_file():
            found.append(path)
        elif path.is_dir():
            found.extend(sorted(p.parent for p in path.glob(f"*/{CELLS_FILE}")))
    return list(dict.fromkeys(found))


def section(folders: list[Path], research_cells: pd.DataFrame) -> Section:
    cells = [{**c, "run": folder.name} for folder in folders for c in speedup_rows(read_cells(folder))]
    frame = pd.DataFrame(cells)
    tau = {}
    if not research_cells.empty:
        at_zero = research_cells[research_cells.temperature == 0]
        tau = {(r.suite, r.method): r.tau for r in at_zero.itertuples()}
    detail = pd.DataFrame({
        "Run": frame.run, "Suite": frame.suite, "Method": frame.method, "Concurrency": frame.concurrency.astype(str),
        "tok/s": frame.throughput_tok_s.map(lambda v: num(v, 1)), "Speedup": frame.speedup.map(num),
        "Engine MAL": frame.mean_acceptance_length.map(num),
        "Harness τ": [num(tau.get((s, m))) for s, m in zip(frame.suite, frame.method)],
        "Same text as vanilla": [f"{int(n)}/{r}" if n == n and n is not None else GAP for n, r in
                                 zip(frame.get("same_text_as_vanilla", [None] * len(frame)), frame.requests)],
        **{f"{name} p{p}": frame[f"{key}_p{p}"].map(lambda v, scale=scale: num(None if v is None else v * scale, 2))
           for name, key, scale in (("TTFT s", "ttft_s", 1), ("TPOT ms", "tpot_s", 1000), ("Latency s", "latency_s", 1))
           for p in PERCENTILES}})
    wide = frame.pivot_table(index=["run", "suite", "method"], columns="concurrency", values="speedup",
                             aggfunc="first", sort=False)
    wide = wide.apply(lambda col: col.map(num)).fillna(GAP).reset_index()
    wide.columns = ["Run", "Suite", "Method"] + [f"c={c}" for c in wide.columns[3:]]
    caption = ("Speedup: output tokens per second of the level (all requests' tokens over the level's wall time), "
               "method over vanilla at the same concurrency, same engine. c: concurrent closed-loop clients.")
    detail_caption = ("Per (method, concurrency): throughput; Engine MAL: vLLM's mean acceptance length, "
                      "1 + accepted / drafts from its own counters (differences around the level); Harness τ: the "
                      "research stack's pooled τ for the same suite at T=0 when its run is in this report (its "
                      "tree, not vLLM's chain); TTFT, TPOT ((latency - TTFT) / (tokens - 1)) and end-to-end latency "
                      "percentiles over requests.")
    return Section("serving", "Serving (vLLM): speedup vs concurrency", tables=[
        Table("serving_speedup", "Throughput speedup over vanilla by concurrency", caption, wide),
        Table("serving_cells", "Serving cells", detail_caption, detail.reset_index(drop=True))])
