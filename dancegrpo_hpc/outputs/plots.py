"""Reward curves as a PNG, drawn with matplotlib's Agg canvas directly so no
global backend (and no display) is involved."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Sequence

from ..checks import require


def reward_curve_keys(metrics: List[Dict[str, Any]]) -> List[str]:
    """reward_mean first, then every other key naming a reward and ending in
    _mean (e.g. rewards/hps_mean), in first-seen order."""
    keys = []
    for record in metrics:
        for key in record:
            if "reward" in key and key.endswith("_mean") and key not in keys:
                keys.append(key)
    return sorted(keys, key=lambda k: k != "reward_mean")


def plot_reward_curve(metrics: List[Dict[str, Any]], path_png, keys: Sequence[str] = ("reward_mean",)) -> Path:
    """One panel per key (rewards differ in scale), value against iteration;
    records lacking a key are skipped for that key."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    keys = list(keys)
    require(keys, "plot_reward_curve: keys must name at least one metric")
    present = {key for record in metrics for key in record}
    missing = [key for key in keys if key not in present]
    require(not missing, f"plot_reward_curve: no record has {', '.join(missing)}; "
                         f"available keys: {', '.join(sorted(present)) or 'none'}")
    figure = Figure(figsize=(6, 2.4 * len(keys)), dpi=100, constrained_layout=True)
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(keys), 1, sharex=True, squeeze=False)[:, 0]
    for ax, key in zip(axes, keys):
        points = [(r.get("iteration", i), r[key]) for i, r in enumerate(metrics) if isinstance(r.get(key), (int, float))]
        ax.plot([x for x, _ in points], [y for _, y in points], marker="o" if len(points) < 30 else None, markersize=3)
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("iteration")
    path_png = Path(path_png)
    path_png.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path_png, format="png")
    return path_png
