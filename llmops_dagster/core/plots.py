"""A metric over windows as a PNG (for asset metadata) or as a markdown table (where images do not
show). Rendered headless with matplotlib's Agg canvas on a fresh ``Figure``: no pyplot, so no global
state shared between threads or runs."""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from datetime import date, datetime
from typing import Any

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_LEVEL_COLOURS = {"WARN": "#d08c00", "ERROR": "#c0392b"}
_LINE_COLOURS = ("#1f77b4", "#2ca02c", "#9467bd", "#8c564b")


def _levels(threshold: float | Mapping[str, float | None] | None) -> dict[str, float]:
    """A single level, or one per severity (``{"WARN": 0.1, "ERROR": 0.25}``)."""
    if threshold is None:
        return {}
    if isinstance(threshold, Mapping):
        return {str(name): float(level) for name, level in threshold.items() if level is not None}
    return {"threshold": float(threshold)}


def _value(value: Any) -> float:
    return math.nan if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def _label(window: Any) -> str:
    if isinstance(window, datetime):
        return window.strftime("%Y-%m-%d %H:%M") if (window.hour, window.minute) != (0, 0) else window.strftime("%Y-%m-%d")
    if isinstance(window, date):
        return window.isoformat()
    return str(window)


def metric_plot(
    windows: Sequence[Any],
    values: Sequence[float | None] | Mapping[str, Sequence[float | None]],
    title: str,
    threshold: float | Mapping[str, float | None] | None = None,
    ylabel: str | None = None,
) -> bytes:
    """PNG bytes of ``values`` per window, in order: one line, or one per label of a mapping (each
    slice's own, since a percentile or a mean of two populations averaged says nothing). A missing
    value (None or NaN) is a gap in the line; every value present is also a marker, so a lone point
    between gaps still shows. Each threshold level is a dashed horizontal line."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    lines = dict(values) if isinstance(values, Mapping) else {ylabel or title: values}
    if len(lines) > len(_LINE_COLOURS):
        raise ValueError(f"{len(lines)} lines; a plot draws {len(_LINE_COLOURS)} at most")
    for series in lines.values():
        if len(windows) != len(series):
            raise ValueError(f"{len(windows)} windows for {len(series)} values")
    figure = Figure(figsize=(7, 3), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    positions = list(range(len(windows)))
    drawn = False
    for (label, series), colour in zip(lines.items(), _LINE_COLOURS, strict=False):
        points = [_value(value) for value in series]
        axes.plot(positions, points, marker="o", markersize=4, linewidth=1.5, color=colour, label=label)
        drawn = drawn or any(not math.isnan(point) for point in points)
    for name, level in _levels(threshold).items():
        axes.axhline(level, linestyle="--", linewidth=1, color=_LEVEL_COLOURS.get(name.upper(), "#c0392b"), label=f"{name} {level:g}")
    if not drawn:
        axes.text(0.5, 0.5, "no data in these windows", transform=axes.transAxes, ha="center", va="center", color="grey")
    step = max(1, math.ceil(len(positions) / 10))
    axes.set_xticks(positions[::step], [_label(window) for window in windows][::step], rotation=30, ha="right", fontsize=8)
    axes.set_title(title, fontsize=10)
    if ylabel:
        axes.set_ylabel(ylabel, fontsize=9)
    axes.grid(alpha=0.3)
    if threshold is not None or isinstance(values, Mapping):  # a slice's line says which it is
        axes.legend(fontsize=8, loc="best")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def markdown_table(
    windows: Sequence[Any],
    values: Sequence[float | None],
    title: str,
    threshold: float | Mapping[str, float | None] | None = None,
    bad: str = "above",
) -> str:
    """The same series as a markdown table; a value on the ``bad`` side of a level is marked with
    that level's name."""
    if len(windows) != len(values):
        raise ValueError(f"{len(windows)} windows for {len(values)} values")
    levels = _levels(threshold)
    lines = [f"**{title}**", "", "| window | value |", "|---|---|"]
    for window, value in zip(windows, values, strict=True):
        point = _value(value)
        if math.isnan(point):
            cell = "–"
        else:
            crossed = [name for name, level in levels.items() if (point > level if bad == "above" else point < level)]
            cell = f"{point:.4g}" + (f" ({', '.join(crossed)})" if crossed else "")
        lines.append(f"| {_label(window)} | {cell} |")
    if levels:
        lines += ["", "levels: " + ", ".join(f"{name} {level:g}" for name, level in levels.items())]
    return "\n".join(lines)
