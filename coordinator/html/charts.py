"""Chart geometry in pixels, drawn as inline SVG by the template (so every label is escaped like
any other text and the page needs no script library). Tick positions come from matplotlib's
locator; everything else is a few lines of arithmetic."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from matplotlib.ticker import MaxNLocator

from coordinator.html.metrics import Metric, fmt


@dataclass(frozen=True)
class Tick:
    pos: float
    label: str


@dataclass(frozen=True)
class Mark:
    x: float
    y: float
    r: float
    cls: str
    title: str
    cand: str = ""
    shape: str = "circle"        # circle | cross | diamond


@dataclass(frozen=True)
class Line:
    points: str                  # "x,y x,y ..."
    cls: str
    title: str = ""


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    w: float
    h: float
    cls: str
    title: str


@dataclass(frozen=True)
class Text:
    x: float
    y: float
    text: str
    cls: str = ""
    anchor: str = "start"
    title: str = ""


@dataclass
class Chart:
    kind: str
    title: str
    width: int
    height: int
    box: tuple[float, float, float, float] = (0, 0, 0, 0)     # plot area x0, y0, x1, y1
    x_label: str = ""
    y_label: str = ""
    x_ticks: list[Tick] = field(default_factory=list)
    y_ticks: list[Tick] = field(default_factory=list)
    lines: list[Line] = field(default_factory=list)
    bars: list[Bar] = field(default_factory=list)
    marks: list[Mark] = field(default_factory=list)
    texts: list[Text] = field(default_factory=list)
    legend: list[tuple[str, str]] = field(default_factory=list)   # (css class, text)
    caption: str = ""
    empty: str = ""                                               # shown instead of the plot


class Axis:
    """Maps data values to pixels over a range widened to round ticks."""

    def __init__(self, values: Sequence[float], p0: float, p1: float, metric: Metric | None = None,
                 include: Sequence[float] = ()):
        data = [*values, *include]
        lo, hi = min(data), max(data)
        if hi - lo < 1e-12:
            pad = abs(lo) * 0.05 or 1.0
            lo, hi = lo - pad, hi + pad
        ticks = [float(t) for t in MaxNLocator(nbins=5).tick_values(lo, hi)]
        self.lo, self.hi = min(ticks[0], lo), max(ticks[-1], hi)
        self.p0, self.p1 = p0, p1
        self.ticks = [Tick(self(t), _tick_label(t, metric)) for t in ticks if self.lo <= t <= self.hi]

    def __call__(self, value: float) -> float:
        return round(self.p0 + (value - self.lo) / (self.hi - self.lo) * (self.p1 - self.p0), 2)


def _tick_label(value: float, metric: Metric | None) -> str:
    if metric is not None and metric.kind == "ratio":
        return f"{value:g}x"
    return f"{value:g}"


# ---------------------------------------------------------------------------------------- scatter
@dataclass(frozen=True)
class Point:
    cid: str
    label: str          # tooltip
    x: float
    y: float
    size: float         # marker area is proportional to it
    front: bool
    recommended: bool


def scatter(title: str, points: Sequence[Point], x_metric: Metric, y_metric: Metric,
            reference: tuple[float, float] | None = None, reference_label: str = "FP32",
            caption: str = "", empty: str = "no candidate ran successfully", join_front: bool = True) -> Chart:
    """Accuracy (y) against latency or size (x), marker area by size, the recommended candidate
    ringed, FP32 as a reference point; the front is joined by a line only when it was computed over
    exactly these two axes (otherwise its projection would zigzag)."""
    chart = Chart("scatter", title, 640, 360, x_label=x_metric.label, y_label=y_metric.label, caption=caption)
    if not points:
        chart.empty = empty
        return chart
    x0, y0, x1, y1 = 64, 24, 620, 316
    chart.box = (x0, y0, x1, y1)
    extra_x = [reference[0]] if reference else []
    extra_y = [reference[1]] if reference else []
    xa = Axis([p.x for p in points], x0, x1, x_metric, extra_x)
    ya = Axis([p.y for p in points], y1, y0, y_metric, extra_y)
    chart.x_ticks, chart.y_ticks = xa.ticks, ya.ticks
    biggest = max(p.size for p in points) or 1.0
    front = sorted((p for p in points if p.front), key=lambda p: (p.x, -p.y))
    if join_front and len(front) > 1:
        chart.lines.append(Line(" ".join(f"{xa(p.x)},{ya(p.y)}" for p in front), "front-line", "Pareto front"))
    for p in sorted(points, key=lambda p: (p.front, p.recommended)):   # front drawn on top
        r = round(3 + 9 * (max(p.size, 0.0) / biggest) ** 0.5, 2)
        cls = "pt front" if p.front else "pt"
        chart.marks.append(Mark(xa(p.x), ya(p.y), r, cls, p.label, p.cid))
        if p.recommended:
            chart.marks.append(Mark(xa(p.x), ya(p.y), r + 5, "rec-ring", p.label, p.cid))
            chart.texts.append(Text(xa(p.x) + r + 7, ya(p.y) - r - 2, "recommended", "rec-label"))
    if reference:
        rx, ry = xa(reference[0]), ya(reference[1])
        chart.lines.append(Line(f"{rx},{y0} {rx},{y1}", "ref-line", f"{reference_label} {x_metric.label}"))
        chart.marks.append(Mark(rx, ry, 6, "ref", f"{reference_label}: {fmt(x_metric, _raw(x_metric, reference[0]))}"
                                f" {x_metric.label}", shape="diamond"))
        chart.texts.append(Text(rx + 8, ry + 4, reference_label, "ref-label"))
    chart.legend = [("pt front", "Pareto front"), ("pt", "other candidates"), ("rec-ring", "recommended"),
                    ("ref", reference_label if reference else "")]
    chart.legend = [item for item in chart.legend if item[1]]
    return chart


def _raw(metric: Metric, plotted: float) -> float:
    """Undo axis scaling for a tooltip (axis shows percent / MB)."""
    if metric.kind == "pct":
        return plotted / 100
    if metric.kind == "mb":
        return plotted * 1e6
    return plotted


# ---------------------------------------------------------------------------------------- history
@dataclass(frozen=True)
class Step:
    index: int              # evaluation number (1-based) or seconds when timed
    value: float | None     # None: not ok (crash/unsupported)
    label: str
    cid: str


def history(title: str, series: dict[str, Sequence[Step]], y_metric: Metric, x_label: str,
            target: float | None = None, higher_is_better: bool = True, caption: str = "") -> Chart:
    """Each evaluation as a dot per device class, the best so far as a step line, failures as crosses
    on the bottom edge, the target as a dashed line."""
    chart = Chart("history", title, 640, 320, x_label=x_label, y_label=y_metric.label, caption=caption)
    values = [s.value for steps in series.values() for s in steps if s.value is not None]
    xs = [s.index for steps in series.values() for s in steps]
    if not xs:
        chart.empty = "no evaluation yet"
        return chart
    x0, y0, x1, y1 = 64, 24, 620, 276
    chart.box = (x0, y0, x1, y1)
    xa = Axis(xs, x0, x1)
    ya = Axis(values or [0.0], y1 - 8, y0, y_metric, [target] if target is not None else [])
    chart.x_ticks, chart.y_ticks = xa.ticks, ya.ticks
    for i, (device, steps) in enumerate(series.items()):
        color = f"s{i % 6}"
        best: float | None = None
        path = []
        for s in steps:
            if s.value is None:
                chart.marks.append(Mark(xa(s.index), y1 - 4, 4, f"fail {color}", s.label, s.cid, "cross"))
                continue
            chart.marks.append(Mark(xa(s.index), ya(s.value), 3.5, f"dot {color}", s.label, s.cid))
            improved = best is None or (s.value > best if higher_is_better else s.value < best)
            if improved:
                if best is not None:
                    path.append(f"{xa(s.index)},{ya(best)}")
                best = s.value
            path.append(f"{xa(s.index)},{ya(best)}")
        if path:
            chart.lines.append(Line(" ".join(path), f"best {color}", f"{device}: best so far"))
        chart.legend.append((f"dot {color}", f"{device} (line: best so far)"))
    if target is not None:
        ty = ya(target)
        chart.lines.append(Line(f"{x0},{ty} {x1},{ty}", "target-line", "target"))
        chart.texts.append(Text(x1 - 4, ty - 4, "target", "ref-label", "end"))
        chart.legend.append(("target-line", "target"))
    if any(s.value is None for steps in series.values() for s in steps):
        chart.legend.append(("fail", "crash / unsupported"))
    return chart


# ---------------------------------------------------------------------------------------- bars
@dataclass(frozen=True)
class BarRow:
    label: str
    values: tuple[float | None, ...]     # one per series, already scaled to [0, 1]
    titles: tuple[str, ...]


def hbars(title: str, rows: Sequence[BarRow], series: Sequence[str], caption: str = "",
          label_chars: int = 36) -> Chart:
    """Horizontal grouped bars, one group per row (e.g. per layer, one bar per ranking method)."""
    row_h = 8 * max(1, len(series)) + 6
    height = 40 + row_h * len(rows) + 24
    chart = Chart("bars", title, 640, height, x_label="normalised damage (1 = most damaged)", caption=caption)
    if not rows:
        chart.empty = "no ranking in this report"
        chart.height = 80
        return chart
    x0, y0, x1 = 240, 16, 620
    y1 = y0 + row_h * len(rows)
    chart.box = (x0, y0, x1, y1)
    xa = Axis([0.0, 1.0], x0, x1)
    chart.x_ticks = xa.ticks
    for i, row in enumerate(rows):
        top = y0 + i * row_h + 3
        short = row.label if len(row.label) <= label_chars else "…" + row.label[-(label_chars - 1):]
        chart.texts.append(Text(x0 - 6, top + row_h / 2 + 1, short, "bar-label", "end", row.label))
        for j, value in enumerate(row.values):
            if value is None:
                continue
            chart.bars.append(Bar(x0, top + j * 8, max(xa(value) - x0, 1.0), 7, f"bar s{j}", row.titles[j]))
    chart.legend = [(f"bar s{j}", name) for j, name in enumerate(series)]
    return chart
