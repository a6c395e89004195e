"""Paper tables: a published table's layout (methods by datasets, speedup / τ, per temperature) with our
measured values on the line under each published row.

Published numbers come only from reports/published/anchors.toml (see its header for the layout); a cell
the file gives as a status (pending-primary, unconfirmed, ...) is shown as that status, never filled.
Ours come from stats.cell_stats, so they carry this run's estimators, named in every caption; a last
table gives our paired τ verdicts between the paper's methods (stats.paired) in the same columns.
"""
from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from harness.errors import UserError
from harness.metrics import PAIRED_INTERVAL
from harness.records import REPLAY_SUFFIX
from harness.report.tables import GAP, METRIC_NAMES, Table, estimator, signed

ANCHORS = Path(__file__).resolve().parents[2] / "reports" / "published" / "anchors.toml"
STATUSES = ("pending-primary", "unconfirmed", "not-reported", "unknown")
RELATIONS = (">", ">=", "<")


def load_anchors(path: Path = ANCHORS) -> dict:
    if not path.is_file():
        raise UserError(f"published numbers not found at {path}")
    with open(path, "rb") as handle:
        anchors = tomllib.load(handle)
    for name, paper in anchors.get("papers", {}).items():
        for table in paper["tables"]:
            columns = table.get("columns", paper["columns"])
            for row in table["rows"]:
                for metric in ("speedup", "tau"):
                    values = row.get(metric, [])
                    if values and len(values) != len(columns):
                        raise UserError(f"{path}: {name} {row['method']} {metric} has {len(values)} values "
                                        f"for {len(columns)} columns")
                    bad = [v for v in values if isinstance(v, str) and v not in STATUSES]
                    if bad or (row.get("status") and row["status"] not in STATUSES):
                        raise UserError(f"{path}: {name} {row['method']}: unknown status {bad or row['status']}")
    for claim in anchors.get("claims", []):
        missing = {"claim", "method", "reference", "relation", "source"} - set(claim)
        if missing or claim["relation"] not in RELATIONS or claim.get("metric", "tau") not in METRIC_NAMES:
            raise UserError(f"{path}: claim {claim.get('claim', '?')}: needs claim, method, reference, source, a "
                            f"relation in {', '.join(RELATIONS)} and, if given, a metric in {', '.join(METRIC_NAMES)}")
    return anchors


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


class Measured:
    """Our (speedup, τ) per run, suite or suite task, temperature and method, looked up by anchor names."""

    def __init__(self, cells: pd.DataFrame, task_cells: pd.DataFrame, pairs: pd.DataFrame | None = None,
                 task_pairs: pd.DataFrame | None = None) -> None:
        self.pairs: dict[tuple, object] = {}
        for frame, by_task in ((pairs, False), (task_pairs, True)):
            for r in (frame if frame is not None else pd.DataFrame()).itertuples(index=False):
                key = (r.run, _norm(r.suite), _norm(r.task) if by_task else "", float(r.temperature))
                self.pairs[(*key, r.method, r.reference)] = r
        self.values: dict[tuple, tuple[float, float, int]] = {}
        self.labels: dict[str, str] = {}
        self.most: dict[tuple[str, str], int] = {}   # the most questions any cell has on a suite (task): its size
        for frame, by_task in ((cells, False), (task_cells, True)):
            for r in frame.itertuples(index=False):
                where = (_norm(r.suite), _norm(r.task) if by_task else "")
                self.values[(r.run, *where, float(r.temperature), r.method)] = (r.speedup, r.tau, r.questions)
                self.most[where] = max(self.most.get(where, 0), r.questions + r.skipped)
                self.labels[r.method] = r.label
        self.runs = list(dict.fromkeys(cells.run)) if "run" in cells else []

    def has(self, run: str, temperature: float, method: str) -> bool:
        return any(k[0] == run and k[3] == temperature and k[4] == method for k in self.values)

    def pair(self, run: str, specs: list[str], temperature: float, method: str, reference: str) -> str | None:
        """Our paired τ difference method - reference on the first matching suite (or task), with its verdict."""
        for spec in specs:
            suite, _, task = spec.partition(":")
            key = (run, _norm(suite), _norm(task), temperature)
            found, sign = self.pairs.get((*key, method, reference)), 1
            if found is None:
                found, sign = self.pairs.get((*key, reference, method)), -1
            if found is not None and not pd.isna(found.tau_diff):
                low, high = sorted((sign * found.tau_lo, sign * found.tau_hi))
                word = "above" if low > 0 else "below" if high < 0 else "n.d."
                return f"{signed(sign * found.tau_diff, low, high)} {word}"
        return None

    def get(self, run: str, specs: list[str], temperature: float, method: str) -> tuple[float, float, str] | None:
        """(speedup, τ, a note when the cell covers fewer questions than another cell has on that suite or task:
        part of the suite, which the published number is not) on the first matching suite (or task)."""
        for spec in specs:
            suite, _, task = spec.partition(":")
            found = self.values.get((run, _norm(suite), _norm(task), temperature, method))
            if found:
                speedup, tau, questions = found
                most = self.most[(_norm(suite), _norm(task))]
                return speedup, tau, f" (n={questions}/{most})" if questions < most else ""
        return None


def _published(value: object) -> str:
    if value is None or value == "not-reported":
        return GAP
    return value if isinstance(value, str) else f"{value:.2f}"


def _cell(speedup: object, tau: object) -> str:
    left, right = _published(speedup), _published(tau)
    return left if left == right else f"{left} / {right}"


def _ours_cells(measured: Measured, run: str, columns: list[str], match: dict, temperature: float,
                method: str) -> list[str]:
    values = {c: measured.get(run, match.get(c, []), temperature, method) for c in columns
              if match.get(c) and match[c] != ["mean"]}
    cells = []
    for column in columns:
        if match.get(column) == ["mean"]:
            found = [v for v in values.values() if v is not None]
            if found and len(found) == len(values):
                means = [sum(v[i] for v in found) / len(found) for i in (0, 1)]
                part = " (part)" if any(v[2] for v in found) else ""
                cells.append(_cell(*(m if not math.isnan(m) else None for m in means)) + part)
            else:
                cells.append(GAP)
        else:
            value = values.get(column)
            cells.append(GAP if value is None else
                         _cell(*(v if not math.isnan(v) else None for v in value[:2])) + value[2])
    return cells


def require_known(names: Iterable[str], anchors: dict) -> None:
    """Refuse every name without published tables in ``anchors``, all at once and before anything is written."""
    papers = anchors.get("papers", {})
    unknown = [name for name in names if name not in papers]
    if unknown:
        raise UserError(f"unknown paper {', '.join(map(repr, unknown))}; known: {', '.join(papers)}")


def paper_tables(name: str, anchors: dict, measured: Measured, runs: list) -> tuple[str, list[str], list[Table]]:
    """(title, notes, tables) for one paper: a table per published table and temperature."""
    require_known([name], anchors)
    paper, aliases = anchors["papers"][name], anchors.get("methods", {})
    ours_note = (f"Ours: speedup = {estimator(runs, 'speedup')}; τ = {estimator(runs, 'tau')}. "
                 "Each cell: speedup (×) / τ; one value where both are the same status; — where the source or our "
                 "results have none; (n=k/N): ours on k questions where another of our cells has N on that suite or "
                 "task, so not the whole of it; (part): a mean over such cells.")
    tables = []
    for number, spec in enumerate(paper["tables"], start=1):
        columns, match = spec.get("columns", paper["columns"]), spec.get("match", paper.get("match", {}))
        temps = list(dict.fromkeys(row.get("temperature") for row in spec["rows"]))
        for temperature in temps:
            lines, extra = [], []
            for row in [r for r in spec["rows"] if r.get("temperature") == temperature]:
                values = [row.get("status")] * len(columns) if "status" in row else [
                    _cell(s, t) for s, t in zip(row.get("speedup", [None] * len(columns)),
                                                row.get("tau", [None] * len(columns)))]
                t_text = "not stated" if temperature is None else f"{temperature:g}"
                lines.append([row.get("target", ""), row["method"], t_text, "paper", *values,
                              row.get("confidence", spec["confidence"])])
                if "source" in row:
                    extra.append(f"{row.get('target', '')} {row['method']}: {row['source']}")
                ours = aliases.get(row["method"])
                if ours is None or temperature is None:
                    continue
                for run in measured.runs:
                    # Decoded, and replayed (<method>-replay: exact T = 0 τ, no wall time), each its own line.
                    names = [n for n in (ours, ours + REPLAY_SUFFIX) if measured.has(run, float(temperature), n)]
                    for shown in names:
                        cells = _ours_cells(measured, run, columns, match, float(temperature), shown)
                        how = "measured" if shown == ours else "replayed (τ only)"
                        lines.append(["", measured.labels.get(shown, shown), t_text, f"ours ({run})", *cells, how])
                    if not names:
                        lines.append(["", measured.labels.get(ours, ours), t_text, f"ours ({run}): not run",
                                      *[GAP] * len(columns), ""])
            frame = pd.DataFrame(lines, columns=["Target", "Method", "T", "Values", *columns, "Confidence"])
            if not frame.Target.any():
                frame = frame.drop(columns="Target")
            t_title = "T not stated" if temperature is None else f"T={temperature:g}"
            caption = (f"{spec['caption']}. Source: {spec['source']}"
                       + (f"; rows with their own source: {'; '.join(extra)}" if extra else "")
                       + f". Confidence: {spec['confidence']}. {ours_note}")
            tables.append(Table(f"paper_{name}_{number}_{t_title.replace('=', '').replace(' ', '_')}",
                                f"{spec['name']}, {t_title}", caption, frame))
    verdicts = _paired_table(name, paper, aliases, measured)
    tables += [verdicts] if verdicts is not None else []
    notes = [f"- {note}" for note in paper.get("notes", [])]
    return paper["title"], [f"Published numbers from reports/published/anchors.toml ({paper['reference']})."] + notes, tables


def _paired_table(name: str, paper: dict, aliases: dict, measured: Measured) -> Table | None:
    """Our paired τ differences between every two of the paper's methods that we ran, in the paper's columns
    (its first table's layout), per run and temperature; None when fewer than two were run."""
    spec = paper["tables"][0]
    columns, match = spec.get("columns", paper["columns"]), spec.get("match", paper.get("match", {}))
    methods = list(dict.fromkeys(aliases[row["method"]] for table in paper["tables"] for row in table["rows"]
                                 if row["method"] in aliases))
    lines = []
    for run, temperature in sorted({(k[0], k[3]) for k in measured.pairs}):
        for suffix in ("", REPLAY_SUFFIX):   # decoded against decoded, replayed against replayed
            ran = [m + suffix for m in methods if measured.has(run, temperature, m + suffix)]
            for i, reference in enumerate(ran):
                for method in ran[i + 1:]:
                    cells = [measured.pair(run, match.get(c, []), temperature, method, reference) or GAP
                             if match.get(c) and match[c] != ["mean"] else GAP for c in columns]
                    if any(c != GAP for c in cells):
                        lines.append([run, f"{temperature:g}", measured.labels.get(method, method),
                                      measured.labels.get(reference, reference), *cells])
    if not lines:
        return None
    frame = pd.DataFrame(lines, columns=["Run", "T", "Method", "Reference", *columns])
    caption = (f"Ours, paired: τ of the method minus τ of the reference on the questions both answered, with its "
               f"interval ({PAIRED_INTERVAL}); above / below: the whole interval on one side of 0; n.d.: not "
               f"distinguishable. Columns as in the first table above; — where we have no matching results.")
    return Table(f"paper_{name}_paired", "Our paired τ verdicts between the paper's methods", caption, frame)
