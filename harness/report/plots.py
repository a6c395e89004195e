"""Report figures with matplotlib (Agg): speedup by task, τ against temperature, acceptance by depth,
accept-length histograms and the latency breakdown; one figure per run and suite, a panel per temperature.

Each figure is saved as PNG (embedded in the HTML page) and SVG (for papers) and carries a caption
that names its estimator. Colours are fixed per method label so a method looks the same everywhere.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from harness.report.stats import LATENCY_PARTS  # noqa: E402

plt.rcParams.update({"svg.hashsalt": "harness-report", "font.size": 10, "axes.titlesize": 11,
                     "axes.spines.top": False, "axes.spines.right": False})


def save(fig: plt.Figure, directory: Path, key: str) -> tuple[Path, Path]:
    """PNG (for the HTML page) and SVG (for papers), both reproducible byte for byte; closes the figure."""
    png, svg = directory / f"{key}.png", directory / f"{key}.svg"
    fig.tight_layout()
    fig.savefig(png, dpi=110, metadata={"Software": None})
    fig.savefig(svg, metadata={"Date": None})
    plt.close(fig)
    return png, svg


@dataclass
class Figure:
    key: str
    caption: str
    png: Path
    svg: Path


class Plotter:
    """Draws into out_dir/plots; remembers method colours across figures."""

    def __init__(self, out_dir: Path) -> None:
        self.dir = out_dir / "plots"
        self.dir.mkdir(parents=True, exist_ok=True)
        self._colours: dict[str, str] = {}

    def colour(self, label: str) -> str:
        if label not in self._colours:
            self._colours[label] = plt.get_cmap("tab10")(len(self._colours) % 10)
        return self._colours[label]

    def _save(self, fig: plt.Figure, key: str, caption: str) -> Figure:
        return Figure(key, caption, *save(fig, self.dir, key))

    @staticmethod
    def _panels(count: int, width: float = 5.2, height: float = 3.6) -> tuple[plt.Figure, list[plt.Axes]]:
        fig, axes = plt.subplots(1, count, figsize=(width * count, height), squeeze=False)
        return fig, list(axes[0])

    def speedup_by_task(self, task_cells: pd.DataFrame, cells: pd.DataFrame, title: str, key: str,
                        caption: str) -> Figure | None:
        data = pd.concat([task_cells, cells.assign(task="overall")], ignore_index=True)
        data = data[(data.method != data.baseline) & data.speedup.notna()]
        if data.empty:
            return None
        temps = sorted(data.temperature.unique())
        fig, axes = self._panels(len(temps), width=max(5.2, 1.1 * data.task.nunique() + 2))
        for ax, temperature in zip(axes, temps):
            part = data[data.temperature == temperature]
            tasks = [t for t in dict.fromkeys(part.task) if t != "overall"] + ["overall"]
            labels = list(dict.fromkeys(part.label))
            width = 0.8 / len(labels)
            for i, label in enumerate(labels):
                rows = part[part.label == label].set_index("task").reindex(tasks)
                x = np.arange(len(tasks)) + (i - (len(labels) - 1) / 2) * width
                errors = np.array([rows.speedup - rows.speedup_lo, rows.speedup_hi - rows.speedup]).clip(min=0)
                ax.bar(x, rows.speedup, width, yerr=np.nan_to_num(errors), capsize=3, label=label,
                       color=self.colour(label))
            ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
            ax.set_xticks(np.arange(len(tasks)), tasks, rotation=30, ha="right")
            ax.set_ylabel("speedup over vanilla (×)")
            ax.set_title(f"{title}, T={temperature:g}")
            ax.legend(fontsize=8)
        return self._save(fig, key, caption)

    def tau_vs_temperature(self, cells: pd.DataFrame, title: str, key: str, caption: str) -> Figure:
        fig, (ax,) = self._panels(1, width=6)
        for label, rows in cells.groupby("label", sort=False):
            rows = rows.sort_values("temperature")
            errors = np.array([rows.tau - rows.tau_lo, rows.tau_hi - rows.tau]).clip(min=0)
            ax.errorbar(rows.temperature, rows.tau, yerr=np.nan_to_num(errors), marker="o", capsize=3,
                        label=label, color=self.colour(label))
        ax.set_xlabel("temperature T")
        ax.set_ylabel("τ (tokens per target forward)")
        ax.set_xticks(sorted(cells.temperature.unique()))
        ax.set_title(title)
        ax.legend(fontsize=8)
        return self._save(fig, key, caption)

    def acceptance_by_depth(self, depth: pd.DataFrame, title: str, key: str, caption: str) -> Figure | None:
        if depth.empty:
            return None
        temps = sorted(depth.temperature.unique())
        fig, axes = self._panels(len(temps))
        for ax, temperature in zip(axes, temps):
            for label, rows in depth[depth.temperature == temperature].groupby("label", sort=False):
                ax.plot(rows.depth, rows.p_accept, marker="o", label=label, color=self.colour(label))
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlim(0.5, max(2, depth.depth.max()) + 0.5)
            ax.set_xlabel("draft depth d")
            ax.set_ylabel("P(accept length > d)")
            ax.set_ylim(0, 1.02)
            ax.set_title(f"{title}, T={temperature:g}")
            ax.legend(fontsize=8)
        return self._save(fig, key, caption)

    def accept_histogram(self, hist: pd.DataFrame, title: str, key: str, caption: str) -> Figure | None:
        drafting = hist[hist.accept_length > 1].groupby(["run", "temperature", "method"]).size().index
        hist = hist[hist.set_index(["run", "temperature", "method"]).index.isin(drafting)]   # vanilla commits 1 a step
        if hist.empty:
            return None
        temps = sorted(hist.temperature.unique())
        fig, axes = self._panels(len(temps))
        for ax, temperature in zip(axes, temps):
            part = hist[hist.temperature == temperature]
            labels = list(dict.fromkeys(part.label))
            width = 0.8 / len(labels)
            for i, label in enumerate(labels):
                rows = part[part.label == label]
                ax.bar(rows.accept_length + (i - (len(labels) - 1) / 2) * width, 100 * rows.share, width,
                       label=label, color=self.colour(label))
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlim(0.4, max(2, hist.accept_length.max()) + 0.6)
            ax.set_xlabel("accept length (tokens committed per step)")
            ax.set_ylabel("share of decoding steps (%)")
            ax.set_title(f"{title}, T={temperature:g}")
            ax.legend(fontsize=8)
        return self._save(fig, key, caption)

    def latency(self, lat: pd.DataFrame, title: str, key: str, caption: str) -> Figure:
        temps = sorted(lat.temperature.unique())
        fig, axes = self._panels(len(temps))
        shades = {"prefill": "#9ecae1", "draft": "#fdae6b", "verify": "#3182bd", "other": "#bdbdbd"}
        for ax, temperature in zip(axes, temps):
            part = lat[lat.temperature == temperature]
            bottom = np.zeros(len(part))
            for name in LATENCY_PARTS:
                values = part[name].clip(lower=0).to_numpy()
                ax.bar(part.label, values, bottom=bottom, label=name, color=shades[name])
                bottom += values
            ax.set_ylabel("ms per generated token")
            ax.tick_params(axis="x", rotation=20)
            ax.set_title(f"{title}, T={temperature:g}")
            ax.legend(fontsize=8)
        return self._save(fig, key, caption)
