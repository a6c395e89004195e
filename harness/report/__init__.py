"""``python -m harness report``: result files in, Markdown + one self-contained HTML page (+ LaTeX) out.

Reads only run directories (manifest.json + answers/*/*.jsonl), never a model. Everything shown is
computed from those rows with harness.metrics estimators (named beside each figure) or read from
reports/published/anchors.toml. Gaps (a missing temperature, an interrupted cell, no vanilla baseline)
become notes and blank cells, not errors. Layout: load -> stats -> tables/plots/paper -> render.
"""
from __future__ import annotations

import argparse
import hashlib
import re
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from harness.errors import UserError
from harness.metrics import INTERVAL
from harness.report import paper as papers
from harness.report import render, serving, stats, tables
from harness.report.load import Group, Run, combined, load_runs, parse_results
from harness.report.plots import Plotter
from harness.report.render import Section


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results", type=parse_results, nargs="+", action="extend", default=None, metavar="DIR",
                        help="run directories (folders with manifest.json) or folders of them (default: results/); "
                             "NAME=DIR,DIR reports several run directories as one run")
    parser.add_argument("--out", type=Path, default=None, help="report folder (default: reports/<run name>)")
    parser.add_argument("--paper", nargs="+", action="extend", default=[], metavar="NAME",
                        help="also lay out papers' tables beside their published numbers, one paper_<name>.* "
                             "each: coral, eagle2, hass, fspad, medusa and/or specbench")
    parser.add_argument("--compare", action="store_true", help="put two or more runs side by side with ratios")
    parser.add_argument("--baseline", default=None, metavar="METHOD",
                        help="the method every speedup is measured against (default: each run's manifest, vanilla)")


def run(args: argparse.Namespace) -> None:
    out = build(args.results or [Path("results")], args.out, args.paper, args.compare, args.baseline)
    print(f"report: {out / 'index.html'}")


def _default_name(runs: list[Run], compare: bool) -> str:
    name = ("compare-" if compare else "") + "+".join(re.sub(r"[^\w.-]", "_", r.name) for r in runs)
    return name if len(name) <= 80 else name[:60] + "-" + hashlib.sha256(name.encode()).hexdigest()[:8]


def _figures(plotter: Plotter, runs: list[Run], cells: pd.DataFrame, task_cells: pd.DataFrame,
             lat: pd.DataFrame, hist: pd.DataFrame, depth: pd.DataFrame) -> dict[str, list]:
    tau_text, sp_text = tables.estimator(runs, "tau"), tables.estimator(runs, "speedup")
    figures: dict[str, list] = {"speedup": [], "tau": [], "latency": [], "acceptance": []}
    for (run, suite), part in cells.groupby(["run", "suite"], sort=False):
        title = suite if len(runs) == 1 else f"{run}: {suite}"
        key = re.sub(r"[^\w.-]", "_", f"{run}_{suite}")

        def pick(frame: pd.DataFrame) -> pd.DataFrame:
            return frame[(frame.run == run) & (frame.suite == suite)] if not frame.empty else frame

        made = {
            "speedup": plotter.speedup_by_task(pick(task_cells), part, title, f"speedup_{key}",
                                               f"Speedup over vanilla per task, {title}. Estimator: {sp_text}. "
                                               f"Error bars: {INTERVAL}. Dashed line: vanilla (1×)."),
            "tau": plotter.tau_vs_temperature(part, title, f"tau_{key}",
                                              f"τ against temperature, {title}. Estimator: {tau_text}. "
                                              f"Error bars: {INTERVAL}."),
            "latency": plotter.latency(pick(lat), title, f"latency_{key}",
                                       f"Wall time per generated token split into prefill, draft, verify and other, "
                                       f"{title}. Timer: {tables.estimator(runs, 'timer_scope')}."),
        }
        acceptance = [
            plotter.accept_histogram(pick(hist), title, f"accept_hist_{key}",
                                     f"Accept-length histogram (tokens committed per decoding step, bonus "
                                     f"included; vanilla always 1), {title}."),
            plotter.acceptance_by_depth(pick(depth), title, f"accept_depth_{key}",
                                        f"Acceptance by draft depth, P(accept length > d), {title}."),
        ]
        for name, figure in made.items():
            if figure is not None:
                figures[name].append(figure)
        figures["acceptance"] += [f for f in acceptance if f is not None]
    return figures


def _crossed_notes(cells: pd.DataFrame) -> list[str]:
    """Cells whose speedup pairs rows timed by different sweeps: a resumed run measured the method and
    its vanilla baseline under different conditions (warm-up, load, clocks)."""
    return [f"- {c.run}: {c.suite} {c.method} T={c.temperature:g}: speedup pairs {c.cross_session} of {c.paired} "
            f"questions whose method and vanilla rows were timed by different sweeps (a resumed run); "
            f"rerun both into a fresh --out for a same-process speedup"
            for c in cells.itertuples() if c.cross_session]


def _device_notes(cells: pd.DataFrame) -> list[str]:
    """Cells whose rows were timed on more than one device type: no speedup pools ratios across hardware."""
    return [f"- {c.run}: {c.suite} {c.method} T={c.temperature:g}: paired rows were timed on several device "
            f"types ({c.device_types}); the speedup is not pooled across them (left blank): rerun the cell on "
            f"one device type" for c in cells.itertuples() if ";" in c.device_types]


def _contended_notes(cells: pd.DataFrame) -> list[str]:
    """Cells timed while other processes shared the machine: their wall times, and so their speedups, are
    not clean timings (README, "Clean timings")."""
    return [f"- {c.run}: {c.suite} {c.method} T={c.temperature:g}: {c.contended} of {c.paired or c.questions} "
            f"questions were timed while other processes shared the machine (load records); rerun on an idle "
            f"machine for a clean speedup" for c in cells.itertuples() if c.contended]


def build(results: list[Path | Group], out: Path | None = None, paper: Sequence[str] = (), compare: bool = False,
          baseline: str | None = None) -> Path:
    """Write report.md, index.html, tables/ and plots/ (and paper_<name>.* for each name in ``paper``); return
    the folder. ``baseline`` overrides each run's speedup reference (the manifest's ``baseline``, vanilla by
    default). The statistics are computed once, however many papers are laid out."""
    served = serving.find([p for p in results if not isinstance(p, Group)])
    research = [p for p in results if p not in served]
    runs = load_runs(research, baseline) if research or not served else []
    if compare and len(runs) < 2:
        raise UserError("--compare needs two or more run directories (pass several --results DIR)")
    anchors = papers.load_anchors()
    papers.require_known(paper, anchors)
    out_dir = out or Path("reports") / (_default_name(runs, compare) if runs else served[0].name)
    out_dir.mkdir(parents=True, exist_ok=True)
    frame = combined(runs) if runs else pd.DataFrame()
    notes = [f"- {run.name}: {note}" for run in runs for note in run.notes]
    sections: list[Section] = []
    cells = task_cells = pairs = pd.DataFrame()
    failures: list[str] = []
    if not frame.empty:
        cells, task_cells = stats.cell_stats(frame), stats.cell_stats(frame, by_task=True)
        failures = stats.lossless_failures(cells)
        notes += _crossed_notes(cells) + _device_notes(cells) + _contended_notes(cells)
        pairs = stats.paired(frame)
        references = ", ".join(dict.fromkeys(r.baseline for r in runs))
        lat, qual = stats.latency(frame), stats.quality(frame)
        hist, depth = stats.acceptance(frame)
        figures = _figures(Plotter(out_dir), runs, cells, task_cells, lat, hist, depth)
        sections += [
            Section("summary", "Speed: τ and speedup", tables=[tables.summary(cells, runs)]),
            Section("paired", "Paired comparisons",
                    tables=[tables.paired(pairs, runs, references),
                            tables.claims(pairs, anchors.get("claims", []), runs)] if not pairs.empty else [],
                    paragraphs=[] if not pairs.empty else ["One method per suite and temperature: nothing to pair."]),
            Section("tasks", "By task", tables=[tables.by_task(task_cells, cells, runs, "speedup"),
                                                 tables.by_task(task_cells, cells, runs, "tau")],
                    figures=figures["speedup"] + figures["tau"]),
            Section("latency", "Latency breakdown", tables=[tables.latency(lat, runs)], figures=figures["latency"]),
            Section("acceptance", "Acceptance", tables=[tables.depth(depth, runs)] if not depth.empty else [],
                    paragraphs=[] if not depth.empty else ["No drafting method in these results."],
                    figures=figures["acceptance"]),
            Section("quality", "Quality", tables=[tables.quality(qual, runs)] if not qual.empty else [],
                    paragraphs=[] if not qual.empty else ["No suite scores in these results."]),
        ]
        if compare:
            both = pd.concat([task_cells, cells.assign(task="overall")], ignore_index=True)
            comparison = tables.comparison(stats.compare(both, [r.name for r in runs]), runs)
            sections.append(Section("comparison", "Comparison", tables=[comparison]))
    if served:
        sections.append(serving.section(served, cells))
    if paper:
        measured = papers.Measured(cells, task_cells, pairs, stats.paired(frame, by_task=True) if not frame.empty
                                   else pd.DataFrame())
        for name in dict.fromkeys(paper):
            title, paragraphs, ptables = papers.paper_tables(name, anchors, measured, runs)
            paper_section = Section(f"paper_{name}", title, paragraphs, ptables)
            sections.append(paper_section)
            render.write_markdown(out_dir / f"paper_{name}.md", title, [paper_section])
            render.write_html(out_dir / f"paper_{name}.html", title, [paper_section])
            render.write_latex(out_dir / f"paper_{name}.tex", ptables)
    sections.insert(0, Section("overview", "Runs and gaps", [
        *failures,
        "Runs: " + ", ".join([f"{r.name} ({r.where})" for r in runs]
                             + [f"{p.name} ({p}, vLLM serving)" for p in served]) + ".",
        "Methods marked NOT LOSSLESS change the output distribution; compare their speed with care.",
        *(notes or ["No gaps: every cell listed in the manifests is complete and has a vanilla baseline."])]))
    if runs:
        sections.append(Section("environment", "Environment and estimators", tables=[tables.environment(runs)]))
    title = f"Speculative decoding report: {', '.join([r.name for r in runs] + [p.name for p in served])}"
    render.write_markdown(out_dir / "report.md", title, sections)
    render.write_html(out_dir / "index.html", title, sections)
    table_dir = out_dir / "tables"
    table_dir.mkdir(exist_ok=True)
    for table in [t for s in sections for t in s.tables]:
        (table_dir / f"{table.key}.md").write_text(render.markdown_table(table) + "\n", encoding="utf-8")
        render.write_latex(table_dir / f"{table.key}.tex", [table])
    return out_dir
