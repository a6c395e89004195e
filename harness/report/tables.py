"""Report tables: the numeric frames of stats.py formatted as strings, each with a title and the estimator.

A Table is format-neutral (render.py writes it as Markdown, HTML or LaTeX). Missing values are an
em dash, never a zero; every caption names the estimator and interval behind its numbers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from harness.metrics import INTERVAL, PAIRED_INTERVAL, verdict
from harness.records import REPLAY_SUFFIX
from harness.report.load import Run
from harness.report.stats import LATENCY_PARTS

GAP = "—"
MAX_DEPTH_COLUMNS = 12


@dataclass
class Table:
    key: str               # stable id: file names, HTML anchors, tests
    title: str
    caption: str           # what the numbers are and which estimator made them
    frame: pd.DataFrame    # all cells already strings


def num(value: object, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return GAP
    return f"{value:.{digits}f}"


def interval(value: float, low: float, high: float, digits: int = 2) -> str:
    if math.isnan(value):
        return GAP
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]" if not math.isnan(low) else num(value, digits)


def estimator(runs: list[Run], key: str) -> str:
    """The manifest's description of one estimator, per run when runs disagree."""
    texts = {run.name: run.manifest.get("estimators", {}).get(key, "not recorded") for run in runs}
    if len(set(texts.values())) == 1:
        return next(iter(texts.values()))
    return "; ".join(f"{name}: {text}" for name, text in texts.items())


def _cell_columns(frame: pd.DataFrame, many_runs: bool) -> pd.DataFrame:
    shown = pd.DataFrame({"Suite": frame.suite, "T": frame.temperature.map(lambda t: f"{t:g}"),
                          "Method": frame.label})
    if many_runs:
        shown.insert(0, "Run", frame.run)
    return shown


def same_text(same, compared: int, lossless: bool) -> str:
    """k/n; a lossless-labelled method below n/n at T = 0 is marked as the failure it is."""
    if same is None or pd.isna(same):
        return GAP
    failed = lossless and int(same) < compared
    return f"{int(same)}/{compared}" + (" FAILED" if failed else "")


def summary(cells: pd.DataFrame, runs: list[Run]) -> Table:
    shown = _cell_columns(cells, len(runs) > 1)
    shown["Questions"] = [f"{n}" + (" (replayed)" if r else "") for n, r in zip(cells.questions, cells.replayed)]
    shown["τ [95% CI]"] = [interval(*v) for v in zip(cells.tau, cells.tau_lo, cells.tau_hi)]
    shown["τ macro"] = cells.tau_macro.map(num)
    shown["tok/s"] = cells.tps.map(lambda v: num(v, 1))
    shown["Speedup [95% CI]"] = [interval(*v) + (" †" if crossed else "") + (" ‡" if busy else "")
                                 for *v, crossed, busy in zip(cells.speedup, cells.speedup_lo, cells.speedup_hi,
                                                              cells.cross_session, cells.contended)]
    shown["Speedup (total time)"] = cells.speedup_total.map(num)
    shown["Same text as vanilla (T=0)"] = [same_text(s, n, lossless) for s, n, lossless
                                           in zip(cells.same_text, cells.compared, cells.lossless)]
    caption = (f"τ: {estimator(runs, 'tau')}. τ macro: mean over questions of per-question τ (HASS). "
               f"tok/s: mean over questions of new_tokens / wall_time. Speedup: {estimator(runs, 'speedup')}. "
               f"Speedup (total time): all tokens over all time, method over vanilla. Intervals: {INTERVAL}. "
               f"†: some pairs were timed by different sweeps (a resumed run); ‡: some were timed while other "
               f"processes shared the machine (not a clean timing); see the notes. Replayed rows give τ only. "
               f"Timer: {estimator(runs, 'timer_scope')}; tokens counted as {estimator(runs, 'token_count_method')}.")
    return Table("summary", "τ, throughput and speedup per method", caption, shown.reset_index(drop=True))


def by_task(task_cells: pd.DataFrame, cells: pd.DataFrame, runs: list[Run], metric: str) -> Table:
    """Spec-Bench layout: one row per method, one column per task plus overall."""
    both = pd.concat([task_cells, cells.assign(task="overall")], ignore_index=True)
    both["shown"] = [interval(*v) for v in zip(both[metric], both[f"{metric}_lo"], both[f"{metric}_hi"])]
    index = ["run", "suite", "temperature", "label"]
    wide = both.pivot_table(index=index, columns="task", values="shown", aggfunc="first", sort=False)
    tasks = [t for t in dict.fromkeys(task_cells.task) if t != "overall"] + ["overall"]
    wide = wide.reindex(columns=tasks).fillna(GAP).reset_index()
    shown = _cell_columns(wide, len(runs) > 1)
    for task in tasks:
        shown[task] = wide[task]
    name = "τ" if metric == "tau" else "Speedup"
    how = (f"τ: {estimator(runs, 'tau')}" if metric == "tau"
           else f"Speedup: {estimator(runs, 'speedup')}, against vanilla on the same task's questions")
    caption = f"{name} per suite task and overall, with a 95% interval. {how}. Intervals: {INTERVAL}."
    return Table(f"{metric}_by_task", f"{name} by task", caption, shown)


def latency(lat: pd.DataFrame, runs: list[Run]) -> Table:
    shown = _cell_columns(lat, len(runs) > 1)
    for part in LATENCY_PARTS:
        shown[f"{part} (ms/token)"] = lat[part].map(num)
    shown["total (ms/token)"] = lat[LATENCY_PARTS].sum(axis=1).map(num)
    drafting = lat.draft / (lat.draft + lat.verify)
    shown["draft share of draft+verify"] = drafting.map(lambda v: GAP if pd.isna(v) else f"{100 * v:.0f}%")
    caption = ("Wall time per generated token, split into the prefill forward, drafting, verification forwards "
               "and the rest of the call (sampling, bookkeeping): sums over questions divided by all new tokens. "
               f"Timer: {estimator(runs, 'timer_scope')}.")
    return Table("latency", "Latency breakdown per generated token", caption, shown.reset_index(drop=True))


def depth(depth_frame: pd.DataFrame, runs: list[Run]) -> Table:
    index = ["run", "suite", "temperature", "label"]
    wide = depth_frame.pivot_table(index=index, columns="depth", values="p_accept", aggfunc="first", sort=False)
    wide = wide.reindex(columns=[d for d in wide.columns if d <= MAX_DEPTH_COLUMNS]).reset_index()
    shown = _cell_columns(wide, len(runs) > 1)
    for d in [c for c in wide.columns if isinstance(c, (int, float)) and not isinstance(c, bool)]:
        shown[f"d={d}"] = wide[d].map(lambda v: GAP if pd.isna(v) else f"{v:.2f}")
    caption = ("P(accept length > d): the share of decoding steps whose draft token at depth d was accepted, "
               "from each step's accept length (accepted drafts + 1, all steps including each turn's prefill "
               f"step). Vanilla drafts nothing and is left out; depths beyond {MAX_DEPTH_COLUMNS} are not shown.")
    return Table("acceptance_by_depth", "Acceptance rate by draft depth", caption, shown)


def quality(qual: pd.DataFrame, runs: list[Run]) -> Table:
    shown = _cell_columns(qual, len(runs) > 1)
    shown["Score"] = qual.score
    shown["Value"] = qual.value.map(lambda v: num(v, 3))
    shown["Vanilla"] = qual.vanilla.map(lambda v: num(v, 3))
    shown["Difference"] = (qual.value - qual.vanilla).map(lambda v: GAP if pd.isna(v) else f"{v:+.3f}")
    shown["Questions"] = [f"{n}" if n == answered else f"{n} of {answered} answered"
                              for n, answered in zip(qual.questions, qual.answered)]
    caption = ("Suite quality scores (GSM8K accuracy, HumanEval pass@1, ...): mean over the questions both the "
               "method and vanilla have a score for; unscored answers (e.g. HumanEval without --allow-code-exec) "
               "are left out, not counted as failures, and n says how many remain. A lossless method should "
               "match vanilla within sampling noise.")
    return Table("quality", "Quality beside vanilla", caption, shown.reset_index(drop=True))


def comparison(comp: pd.DataFrame, runs: list[Run]) -> Table:
    shown = pd.DataFrame({"Suite": comp.suite, "T": comp.temperature.map(lambda t: f"{t:g}")})
    if "task" in comp.columns:
        shown["Task"] = comp.task
    shown["Method"] = comp.label
    for column in comp.columns[len(shown.columns):]:
        shown[column] = comp[column].map(lambda v: num(v, 2))
    caption = (f"τ and speedup of each run side by side (speedups against each run's own vanilla), and ratios of "
               f"each run over {runs[0].name}. τ: {estimator(runs, 'tau')}. Speedup: {estimator(runs, 'speedup')}.")
    return Table("comparison", "Comparison of runs", caption, shown.reset_index(drop=True))


def _drift(drift: list[str] | None) -> str | None:
    """Whether a run used the locked versions; None (not recorded) for runs made before the lock or without it."""
    if drift is None:
        return None
    return "as locked" if not drift else ", ".join(drift)


def environment(runs: list[Run]) -> Table:
    rows: dict[str, dict[str, str]] = {}
    for run in runs:
        settings = run.manifest.get("settings", {})
        sweeps = run.manifest.get("sweeps", [])
        env = sweeps[-1].get("env", {}) if sweeps else {}
        commit = env.get("harness_commit") or "not recorded"
        values = {
            "path": run.where, "device": settings.get("device"), "gpu": env.get("gpu"), "cpu": env.get("cpu"),
            "cpu cores / torch threads": f"{env['cpu_count']} / {env.get('torch_threads')}" if env.get("cpu_count") else None,
            "python": env.get("python"), "torch": env.get("torch"), "cuda": env.get("cuda"),
            "transformers": env.get("transformers"), "platform": env.get("platform"),
            "versions vs requirements.lock": _drift(env.get("lock_drift")),
            "harness commit": commit + (" (uncommitted changes)" if env.get("harness_dirty") else ""),
            "target": settings.get("target"), "dtype": settings.get("dtype"),
            "max_new_tokens": settings.get("max_new_tokens"), "seed": settings.get("seed"),
            "warm-up generations": settings.get("warmup"),
            "sweeps": ", ".join(s.get("status", "unfinished") for s in sweeps),
            **{f"estimator: {k}": v for k, v in run.manifest.get("estimators", {}).items()},
        }
        for field, value in values.items():
            rows.setdefault(field, {})[run.name] = GAP if value is None else str(value)
    shown = pd.DataFrame.from_dict(rows, orient="index").reindex(columns=[r.name for r in runs]).fillna(GAP)
    shown = shown.rename_axis("Field").reset_index()
    caption = ("From each run's manifest.json; the environment is the one recorded by the run's last sweep (a group's: "
               "its last folder's). A setting that differs between a group's folders lists each folder's value.")
    return Table("environment", "Environment and estimators", caption, shown)


def signed(value: float, low: float, high: float, digits: int = 2) -> str:
    """A difference with its interval, signed: +0.12 [+0.03, +0.21]."""
    if value is None or pd.isna(value):
        return GAP
    if pd.isna(low):
        return f"{value:+.{digits}f}"
    return f"{value:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]"


def paired(pairs: pd.DataFrame, runs: list[Run], baseline: str) -> Table:
    """Every pair of methods on the same questions: differences of τ and speedup with paired intervals."""
    shown = _cell_columns(pairs, len(runs) > 1)
    shown.insert(len(shown.columns), "Reference", pairs.reference_label)
    shown["Questions"] = pairs.questions.astype(str)
    shown["Δτ pooled [95% CI]"] = [signed(*v) for v in zip(pairs.tau_diff, pairs.tau_lo, pairs.tau_hi)]
    shown["τ verdict"] = pairs.tau_verdict.fillna("").replace("", GAP)
    shown["Δτ per question [95% CI]"] = [signed(*v) for v in zip(pairs.tau_q_diff, pairs.tau_q_lo, pairs.tau_q_hi)]
    shown["above / below on"] = [f"{int(a)} / {int(b)}" for a, b in zip(pairs.tau_q_above, pairs.tau_q_below)]
    speed = [pairs.get(c, pd.Series([float("nan")] * len(pairs))) for c in ("speedup_diff", "speedup_lo", "speedup_hi")]
    contended = pairs.get("speed_contended", pd.Series([0] * len(pairs))).fillna(0)
    shown["Δspeedup [95% CI]"] = [signed(*v) + (" ‡" if c else "") for *v, c in zip(*speed, contended)]
    shown["speedup verdict"] = pairs.get("speedup_verdict", pd.Series([""] * len(pairs))).fillna("").replace("", GAP)
    caption = (f"Method minus reference on the questions both answered (MT-bench's turns belong to their "
               f"question). Δτ pooled: difference of τ ({estimator(runs, 'tau')}); Δτ per question: mean over "
               f"questions of the per-question τ difference, and on how many questions the method is above / "
               f"below. Δspeedup: difference of the two speedups over {baseline} ({estimator(runs, 'speedup')}), "
               f"on the questions all three timed by a real decode (replayed rows have no wall time). "
               f"Intervals: {PAIRED_INTERVAL}. Verdict: above / below when the whole interval is on one side of 0, "
               f"else not distinguishable. ‡: some of these questions were timed while other processes shared "
               f"the machine.")
    return Table("paired", "Paired differences between methods", caption, shown.reset_index(drop=True))


METRIC_NAMES = {"tau": "τ", "speedup": "speedup"}
CLAIM_VERDICTS = {(">", "above"): "reproduced", (">", "below"): "contradicted",
                  ("<", "below"): "reproduced", ("<", "above"): "contradicted",
                  (">=", "above"): "reproduced", (">=", "not distinguishable"): "not contradicted (no difference detected)",
                  (">=", "below"): "contradicted"}


def _claim_row(pairs: pd.DataFrame, method: str, reference: str) -> tuple[pd.DataFrame, int]:
    """The pair rows comparing method with reference, and the sign that turns them into method - reference."""
    direct = pairs[(pairs.method == method) & (pairs.reference == reference)]
    if not direct.empty:
        return direct, 1
    return pairs[(pairs.method == reference) & (pairs.reference == method)], -1


def _claim_rows(pairs: pd.DataFrame, method: str, reference: str) -> list[tuple[pd.DataFrame, int, str]]:
    """The claim's pairs decoded, and its pairs replayed (cells <method>-replay), each with its sign and a note."""
    found = [(*_claim_row(pairs, method, reference), ""),
             (*_claim_row(pairs, method + REPLAY_SUFFIX, reference + REPLAY_SUFFIX), " (replayed)")]
    return [entry for entry in found if not entry[0].empty]


def claims(pairs: pd.DataFrame, claim_list: list[dict], runs: list[Run]) -> Table:
    """Each published claim (method > reference in τ, or in speedup) against our paired verdict, per suite and T."""
    lines = []
    for claim in claim_list:
        metric = claim.get("metric", "tau")
        measured = len(lines)
        for rows, sign, note in _claim_rows(pairs, claim["method"], claim["reference"]):
            for r in rows.itertuples():
                diff, low, high = (getattr(r, f"{metric}_{part}", float("nan")) for part in ("diff", "lo", "hi"))
                if pd.isna(diff):
                    continue   # a speedup claim on replayed rows: no wall time to compare
                diff, low, high = (sign * diff, *sorted((sign * low, sign * high)))
                outcome = CLAIM_VERDICTS.get((claim["relation"], verdict(low, high)), "not distinguishable")
                contended = metric == "speedup" and getattr(r, "speed_contended", 0)
                where = (f"{r.run}: {r.suite}" if len(runs) > 1 else r.suite) + note
                lines.append([claim["claim"], METRIC_NAMES[metric], where, f"{r.temperature:g}", str(r.questions),
                              signed(diff, low, high) + (" ‡" if contended else ""), outcome, claim["source"]])
        if len(lines) == measured:
            lines.append([claim["claim"], METRIC_NAMES[metric], GAP, GAP, GAP, GAP, "not measured here",
                          claim["source"]])
    frame = pd.DataFrame(lines, columns=["Claim", "Metric", "Suite", "T", "Questions",
                                         "Δ (method − reference) [95% CI]", "Here", "Claimed by"])
    caption = (f"Published claims (reports/published/anchors.toml [[claims]]) against our paired difference of τ, "
               f"or of speedup where the claim is about speed (real decodes only), on each suite and temperature. "
               f"Intervals: {PAIRED_INTERVAL}. Reproduced: the whole interval lies on the claimed side of 0; "
               f"contradicted: on the other side; for ≥, an interval around 0 does not contradict it; not "
               f"distinguishable otherwise: more questions are needed. ‡: some of the timed questions shared the "
               f"machine with other processes.")
    return Table("claims", "Published claims, tested here", caption, frame)
