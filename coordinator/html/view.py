"""What report.html shows, built from a report dict that may be old, partial (a running campaign)
or from a later version: every section is optional, every value is type-checked before use, and
what is missing or malformed becomes a visible note instead of an exception. Columns come from
what the results contain (coordinator/html/metrics.py), so keys added later appear on their own."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import PurePath
from typing import Any, Mapping, Sequence

from coordinator.html import charts
from coordinator.html.metrics import FIDELITY_KEYS, KNOWN_BY_KEY, Metric, axis_value, columns, flatten, fmt
from coordinator.html.reading import as_map, as_number, as_strs
from coordinator.html.tables import Cell, Column, Row, Table, css_key, facts, metric_cell, records, text
from coordinator.report import SCHEMA_VERSION
from shared.errors import DataError

#: top-level keys with a view of their own; any other key is drawn generically under "Other sections"
KNOWN_SECTIONS = frozenset({"schema_version", "identity", "model", "settings", "data", "devices", "ranking",
                            "ranking_method", "candidates", "fp32", "pareto", "status", "recipe_probe", "search",
                            "blame", "comparison"})
#: sections whose absence a reader should be told about (older or partial reports)
EXPECTED = {"fp32": "FP32 baselines", "pareto": "Pareto fronts and recommendations",
            "ranking": "the layer sensitivity ranking", "status": "the campaign's state"}
METHOD_NAMES = {"seqto": "SeQTO", "quantune": "QuantuneV2"}
AGREEMENT_GAP = 0.02      # top-1 agreement differing by more than this across classes is a divergence
LATENCY_BAND = 0.05       # faster than FP32 below 1 - band, slower above 1 + band
RANKING_BARS = 25


@dataclass(frozen=True)
class Note:
    level: str     # warn | info
    text: str


@dataclass(frozen=True)
class Candidate:
    index: int                         # position in the report: the order candidates were built
    id: str
    excluded: tuple[str, ...]
    int16: tuple[str, ...]
    size_bytes: float | None
    recipe: str
    origin: str
    results: dict[str, dict]           # device -> result (only well-formed ones)

    @property
    def short(self) -> str:
        return self.id[:10]

    def describe(self) -> str:
        parts = [f"{len(self.excluded)} float layer{'s' if len(self.excluded) != 1 else ''}"]
        if self.int16:
            parts.append(f"{len(self.int16)} int16")
        if self.recipe:
            parts.append(self.recipe)
        if self.origin:
            parts.append(f"{self.origin} probe")
        return ", ".join(parts)


@dataclass
class Recommendation:
    cid: str | None
    short: str
    describe: str
    reason: str
    reason_inferred: bool
    policy: str
    target_line: str
    target_met: bool | None
    numbers: list[tuple[str, str, str]] = field(default_factory=list)   # label, value, versus FP32
    details: list[tuple[str, str]] = field(default_factory=list)        # other keys of the summary


@dataclass
class DeviceView:
    index: int
    name: str
    anchor: str
    recommendation: Recommendation
    chart: charts.Chart
    table: Table
    counts: str
    best: list[tuple[str, str]]


@dataclass
class Block:
    """A section drawn generically: a table or a list of facts."""

    title: str
    table: Table | None = None
    facts: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class ReportView:
    title: str
    subtitle: str
    notes: list[Note]
    overview: list[tuple[str, list[tuple[str, str]]]]
    fp32: Table | None
    devices: list[DeviceView]
    comparison: Table | None
    comparison_notes: list[str]
    reported_comparison: list[Block]
    ranking_chart: charts.Chart | None
    ranking: Table | None
    recipe_probe: list[Block]
    blame: list[Block]
    history: charts.Chart
    search: list[tuple[str, str]]
    others: list[Block]


def build(report: Any) -> ReportView:
    """The page's content; raises DataError only when `report` is not a qfarm report at all."""
    if not isinstance(report, Mapping) or "candidates" not in report or "model" not in report:
        raise DataError("not a qfarm report (no 'model'/'candidates')", step="report")
    if not isinstance(report["candidates"], list):
        raise DataError(f"not a qfarm report ('candidates' is a {type(report['candidates']).__name__}, "
                        "not a list)", step="report")
    return _Builder(report).build()


class _Builder:
    def __init__(self, report: Mapping):
        self.r = report
        self.notes: list[Note] = []
        self.pareto = as_map(report.get("pareto"))
        self.per_device = as_map(self.pareto.get("per_device"))
        self.fp32 = as_map(report.get("fp32"))
        self.settings = as_map(report.get("settings"))
        self.candidates = self._candidates()
        self.devices = self._devices()
        self.by_id = {c.id: c for c in self.candidates}
        self.flats = {d: {c.id: self._flat(c, d) for c in self.candidates if d in c.results} for d in self.devices}

    # -- normalising ----------------------------------------------------------------------------
    def _candidates(self) -> list[Candidate]:
        probe_names = self._probe_names()
        base = self.settings
        out, bad = [], 0
        for i, raw in enumerate(self.r["candidates"]):
            if not isinstance(raw, Mapping) or not isinstance(raw.get("id"), str):
                bad += 1
                continue
            results = {str(d): dict(res) for d, res in as_map(raw.get("results")).items() if isinstance(res, Mapping)}
            settings = as_map(raw.get("settings"))
            recipe = probe_names.get(raw["id"]) or ", ".join(
                f"{k}={text(v)}" for k, v in settings.items() if k in base and base.get(k) != v)
            out.append(Candidate(i, raw["id"], as_strs(raw.get("excluded_nodes")), as_strs(raw.get("int16_nodes")),
                                 as_number(raw.get("size_bytes")), recipe, str(raw.get("origin") or ""), results))
        if bad:
            self.notes.append(Note("warn", f"{bad} candidate entries are malformed (no id) and are not shown"))
        return out

    def _probe_names(self) -> dict[str, str]:
        names = {}
        for section in self._probe_sections():
            for recipe, measured in as_map(section.get("measured")).items():
                cid = as_map(measured).get("candidate")
                if isinstance(cid, str):
                    names.setdefault(cid, f"recipe {recipe}")
        return names

    def _probe_sections(self) -> list[Mapping]:
        """The recipe probe as one section, or one per device class (later reports)."""
        probe = as_map(self.r.get("recipe_probe"))
        if "measured" in probe:
            return [probe]
        return [as_map(v) for v in probe.values() if isinstance(v, Mapping) and "measured" in v]

    def _devices(self) -> list[str]:
        listed = [str(d) for d in self.r.get("devices", []) if isinstance(d, str)] \
            if isinstance(self.r.get("devices"), list) else []
        seen = dict.fromkeys(listed)
        for c in self.candidates:
            for d in c.results:
                seen.setdefault(d)
        for d in self.per_device:
            seen.setdefault(str(d))
        if "devices" not in self.r:
            self.notes.append(Note("warn", "no 'devices' list: device classes are taken from the results"))
        return list(seen)

    def _flat(self, cand: Candidate, device: str) -> dict[str, float]:
        result = cand.results[device]
        flat = flatten(result)
        if result.get("status") != "ok":   # numbers of a failed run (size of the file) are not measurements
            flat = {k: v for k, v in flat.items() if k == "size_bytes"}
        if "size_bytes" not in flat and cand.size_bytes:
            flat["size_bytes"] = cand.size_bytes
        fp32_p50 = as_number(as_map(self.fp32.get(device)).get("latency_ms_p50"))
        if "latency_ratio_vs_fp32" not in flat and fp32_p50 and "latency_ms_p50" in flat:
            flat["latency_ratio_vs_fp32"] = flat["latency_ms_p50"] / fp32_p50
        return flat

    def _status(self, cand: Candidate, device: str) -> str:
        return str(cand.results.get(device, {}).get("status") or "-")

    # -- sections -------------------------------------------------------------------------------
    def build(self) -> ReportView:
        self._schema_notes()
        model = as_map(self.r.get("model"))
        name = PurePath(str(model.get("path") or "model")).name
        status = as_map(self.r.get("status"))
        state = str(status.get("state") or "unknown")
        subtitle = (f"{len(self.candidates)} candidates on {len(self.devices)} device class"
                    f"{'es' if len(self.devices) != 1 else ''} ({', '.join(self.devices) or 'none'}); state: {state}")
        view = ReportView(
            title=f"qfarm report: {name}", subtitle=subtitle, notes=self.notes, overview=self._overview(),
            fp32=self._fp32(), devices=[self._device(i, d) for i, d in enumerate(self.devices)],
            comparison=None, comparison_notes=[], reported_comparison=[], ranking_chart=None, ranking=None,
            recipe_probe=self._recipe_probe(), blame=self._blame(), history=self._history(),
            search=self._search(), others=self._others())
        view.comparison, view.comparison_notes = self._comparison()
        if "comparison" in self.r:
            view.reported_comparison = self._generic("comparison", self.r["comparison"], "as the tuner reported it")
        view.ranking_chart, view.ranking = self._ranking()
        return view

    def _schema_notes(self) -> None:
        version = self.r.get("schema_version")
        if version is None:
            self.notes.append(Note("warn", "this report has no schema_version (written by an early qfarm): "
                                           "only what it contains is shown"))
        elif not isinstance(version, int) or version < SCHEMA_VERSION:
            self.notes.append(Note("warn", f"this report has schema_version {text(version)}, older than this "
                                           f"renderer's {SCHEMA_VERSION}: sections added since are missing"))
        elif version > SCHEMA_VERSION:
            self.notes.append(Note("warn", f"this report has schema_version {version}, newer than this renderer's "
                                           f"{SCHEMA_VERSION}: unknown sections are shown generically"))
        status = as_map(self.r.get("status"))
        state = status.get("state")
        if state != "done":
            results = sum(len(c.results) for c in self.candidates)
            what = f"still {state}" if isinstance(state, str) else "of unknown state"
            self.notes.append(Note("warn", f"this campaign is {what}: a snapshot with {results} results so far; "
                                           "fronts and recommendations may still change"))
        for key, what in EXPECTED.items():
            if key not in self.r:
                self.notes.append(Note("info", f"no '{key}' section: {what} are not shown"))
        if not self.candidates:
            self.notes.append(Note("info", "no candidate has been built yet"))

    def _overview(self) -> list[tuple[str, list[tuple[str, str]]]]:
        out = []
        for key, title in (("model", "Model"), ("data", "Data"), ("settings", "Settings"), ("status", "Status")):
            value = self.r.get(key)
            if value is not None:
                out.append((title, facts(value)))
        return out

    def _fp32(self) -> Table | None:
        if not self.fp32:
            return None
        flats = {d: flatten(v) for d, v in self.fp32.items() if isinstance(v, Mapping)}
        metrics = columns(flats.values())
        table = Table("fp32", [Column("device class", "device")] +
                      [Column(m.label, css_key(m.key), m.title, True) for m in metrics] +
                      [Column("status", "status"), Column("runtime", "runtime")])
        for device, flat in flats.items():
            raw = self.fp32[device]
            table.rows.append(Row([Cell(device)] + [metric_cell(m, flat.get(m.key)) for m in metrics] +
                                  [Cell(text(raw.get("status", "ok"))), Cell(_runtime(raw.get("runtime")))]))
        return table

    # -- per device -----------------------------------------------------------------------------
    def _device(self, index: int, device: str) -> DeviceView:
        summary = as_map(self.per_device.get(device))
        fronts = [[str(c) for c in f] for f in summary.get("fronts", []) if isinstance(f, list)] \
            if isinstance(summary.get("fronts"), list) else []
        front_of = {cid: i + 1 for i, f in enumerate(fronts) for cid in f}
        rec = summary.get("recommended") if isinstance(summary.get("recommended"), str) else None
        measured = [c for c in self.candidates if device in c.results]
        ok = [c for c in measured if self._status(c, device) == "ok"]
        counts = f"{len(measured)} measured, {len(ok)} ok, {len(measured) - len(ok)} failed"
        best = [(str(o), str(cid)[:10]) for o, cid in as_map(summary.get("best")).items()]
        return DeviceView(index, device, f"device-{index}", self._recommendation(device, summary, rec),
                          self._pareto_chart(device, ok, front_of, rec), self._candidate_table(index, device,
                                                                                              measured, front_of, rec),
                          counts, best)

    def _recommendation(self, device: str, summary: Mapping, rec: str | None) -> Recommendation:
        target = as_map(summary.get("target"))
        met = target.get("met") if isinstance(target.get("met"), bool) else None
        objectives = ", ".join(as_strs(self.pareto.get("objectives"))) or "the objectives"
        decided = as_map(summary.get("policy"))          # the tuner's policy: prefer, reason, verdict
        reason = summary.get("reason", decided.get("reason"))
        inferred = not isinstance(reason, str)
        if inferred:
            if rec is None:
                ran = any(self._status(c, device) == "ok" for c in self.candidates)
                reason = "no recommendation in the report" if ran else \
                    "no candidate ran successfully on this device class"
            elif met:
                reason = "the smallest candidate that meets the target"
            elif met is False:
                reason = f"target not met: the Pareto-front member closest to the ideal point over {objectives}"
            else:
                reason = f"the Pareto-front member closest to the ideal point over {objectives}"
        policy = next((text(v) for v in (summary.get("prefer"), decided.get("prefer"), self.settings.get("prefer"))
                       if v is not None), "")
        handled = {"fronts", "best", "recommended", "target", "reason", "prefer", "policy", "points"}
        details = [(k, v) for k, v in facts({k: v for k, v in summary.items() if k not in handled}) if v != "-"]
        if isinstance(decided.get("verdict"), str):
            details.insert(0, ("verdict", decided["verdict"]))
        cand = self.by_id.get(rec) if rec else None
        return Recommendation(rec, rec[:10] if rec else "none", cand.describe() if cand else "", str(reason),
                              inferred, policy, text(target.get("line")) if target.get("line") else "", met,
                              self._versus_fp32(cand, device) if cand else [], details)

    def _versus_fp32(self, cand: Candidate, device: str) -> list[tuple[str, str, str]]:
        flat = self.flats.get(device, {}).get(cand.id, {})
        base = flatten(self.fp32.get(device))
        out = []
        for m in columns([flat]):
            value = flat[m.key]
            versus = ""
            ref = base.get(m.key)
            if ref is not None and (ref or m.kind == "pct"):
                if m.kind == "mb":
                    versus = f"{value / ref * 100:.0f}% of FP32 ({fmt(m, ref)})"
                elif m.kind == "ms":
                    versus = f"FP32 {fmt(m, ref)}"
                elif m.kind == "pct":
                    versus = f"FP32 {fmt(m, ref)} ({(value - ref) * 100:+.1f} pt)"
            out.append((m.label, fmt(m, value), versus))
        return out

    def _pareto_chart(self, device: str, ok: list[Candidate], front_of: dict[str, int], rec: str | None):
        flats = self.flats.get(device, {})
        y_metric = _first_metric(FIDELITY_KEYS, [flats[c.id] for c in ok])
        has_latency = any("latency_ms_p50" in flats[c.id] for c in ok)
        x_metric = KNOWN_BY_KEY["latency_ms_p50" if has_latency else "size_bytes"]
        points = []
        for c in ok:
            f = flats[c.id]
            if y_metric is None or y_metric.key not in f or x_metric.key not in f:
                continue
            tip = f"{c.short}: {c.describe()}; " + "; ".join(f"{m.label} {fmt(m, f[m.key])}" for m in columns([f]))
            points.append(charts.Point(c.id, tip, axis_value(x_metric, f[x_metric.key]),
                                       axis_value(y_metric, f[y_metric.key]), f.get("size_bytes", 1.0),
                                       front_of.get(c.id) == 1, c.id == rec))
        base = flatten(self.fp32.get(device))
        reference = None
        if x_metric.key in base and y_metric is not None and y_metric.kind == "pct" and "agreement" in y_metric.key:
            reference = (axis_value(x_metric, base[x_metric.key]), 100.0)   # FP32 agrees with itself
        caption = "marker area: model size" + (f"; front over {', '.join(as_strs(self.pareto.get('objectives')))}"
                                               if self.pareto.get("objectives") else "")
        objectives = set(as_strs(self.pareto.get("objectives")))
        x_objective = "latency_ms" if x_metric.key == "latency_ms_p50" else "size_bytes"
        join = len(objectives) == 2 and x_objective in objectives
        return charts.scatter(f"{device}: {y_metric.label if y_metric else 'accuracy'} vs {x_metric.label}",
                              points, x_metric, y_metric or KNOWN_BY_KEY["top1_agreement"], reference,
                              caption=caption, join_front=join)

    def _candidate_table(self, index: int, device: str, measured: list[Candidate], front_of: dict[str, int],
                         rec: str | None) -> Table:
        flats = self.flats.get(device, {})
        metrics = columns(flats[c.id] for c in measured)
        has_recipe = any(c.recipe for c in measured)
        has_int16 = any(c.int16 for c in measured)
        cols = [Column("candidate", "candidate"), Column("front", "front", "Pareto front number (1 = best)", True)]
        cols += [Column("recipe", "recipe")] if has_recipe else []
        cols += [Column("float layers", "float-layers", "nodes kept in float", True)]
        cols += [Column("int16 layers", "int16-layers", numeric=True)] if has_int16 else []
        cols += [Column(m.label, css_key(m.key), m.title, True) for m in metrics]
        cols += [Column("status", "status"), Column("crash cause", "crash-cause")]
        table = Table(f"candidates-{index}", cols)
        for c in measured:
            result = c.results[device]
            flat = flats[c.id]
            front = front_of.get(c.id)
            cells = [_cand_cell(c, rec), Cell(str(front) if front else "-", front if front else "")]
            cells += [Cell(c.recipe or "base")] if has_recipe else []
            cells += [Cell(str(len(c.excluded)), len(c.excluded), title=", ".join(c.excluded))]
            cells += [Cell(str(len(c.int16)), len(c.int16), title=", ".join(c.int16))] if has_int16 else []
            cells += [metric_cell(m, flat.get(m.key)) for m in metrics]
            status = self._status(c, device)
            cells += [Cell(status, cls="" if status == "ok" else "bad"),
                      Cell(text(result.get("crash_cause")) if result.get("crash_cause") else "",
                           detail=text(result.get("stderr_tail")) if result.get("stderr_tail") else "")]
            cls = " ".join(x for x in ("rec" if c.id == rec else "", "front" if front == 1 else "",
                                       "" if status == "ok" else "failed") if x)
            table.rows.append(Row(cells, cls, c.id))
        return table

    # -- across devices -------------------------------------------------------------------------
    def _comparison(self) -> tuple[Table | None, list[str]]:
        if len(self.devices) < 2:
            return None, ["one device class: nothing to compare"]
        notes = []
        recs = {d: as_map(self.per_device.get(d)).get("recommended") for d in self.devices}
        if len({r for r in recs.values()}) > 1:
            notes.append("each device class recommends its own candidate: " +
                         "; ".join(f"{d}: {str(r)[:10] if r else 'none'}" for d, r in recs.items()))
        all_flats = [f for d in self.devices for f in self.flats[d].values()]
        keys = [k for k in ("top1_agreement", "output_sqnr_db", "latency_ms_p50", "latency_ratio_vs_fp32")
                if any(k in f for f in all_flats)]
        metrics = [KNOWN_BY_KEY[k] for k in keys]
        cols = [Column("candidate", "candidate"), Column("float layers", "float-layers", numeric=True)]
        groups = [("", 2)]
        for i, d in enumerate(self.devices):
            cols += [Column(m.label, f"d{i}-{css_key(m.key)}", f"{d}: {m.title}", True) for m in metrics]
            cols.append(Column("status", f"d{i}-status", d))
            groups.append((d, len(metrics) + 1))
        cols.append(Column("divergence", "divergence"))
        groups.append(("", 1))
        table = Table("comparison", cols, groups=groups)
        diverging = 0
        for c in self.candidates:
            flags, odd = self._divergence(c, keys)
            diverging += bool(flags)
            cells = [_cand_cell(c, None, [d for d, r in recs.items() if r == c.id]),
                     Cell(str(len(c.excluded)), len(c.excluded))]
            for d in self.devices:
                flat = self.flats[d].get(c.id, {})
                status = self._status(c, d)
                cells += [metric_cell(m, flat.get(m.key), "odd" if (d, m.key) in odd else "") for m in metrics]
                cells.append(Cell(status, cls="odd" if (d, "status") in odd else ("" if status == "ok" else "bad")))
            cells.append(Cell("; ".join(flags), cls="flag" if flags else ""))
            table.rows.append(Row(cells, "diverge" if flags else "", c.id))
        table.caption = (f"{diverging} of {len(self.candidates)} candidates diverge across device classes "
                         f"(ok on one and failing on another, top-1 agreement apart by more than "
                         f"{AGREEMENT_GAP * 100:.0f} points, or faster than FP32 on one and slower on another)")
        return table, notes

    def _divergence(self, c: Candidate, keys: Sequence[str]) -> tuple[list[str], set[tuple[str, str]]]:
        flags: list[str] = []
        odd: set[tuple[str, str]] = set()
        statuses = {d: self._status(c, d) for d in self.devices if d in c.results}
        good = [d for d, s in statuses.items() if s == "ok"]
        bad = [d for d, s in statuses.items() if s != "ok"]
        if good and bad:
            flags.append(f"ok on {', '.join(good)}; " + ", ".join(f"{statuses[d]} on {d}" for d in bad))
            odd |= {(d, "status") for d in bad}
        flats = {d: self.flats[d].get(c.id, {}) for d in good}
        agree = {d: f["top1_agreement"] for d, f in flats.items() if "top1_agreement" in f}
        if len(agree) > 1 and max(agree.values()) - min(agree.values()) > AGREEMENT_GAP + 1e-12:
            low = min(agree, key=agree.get)
            flags.append(f"top-1 agreement {(max(agree.values()) - agree[low]) * 100:.1f} pt lower on {low}")
            odd.add((low, "top1_agreement"))
        ratio = {d: f["latency_ratio_vs_fp32"] for d, f in flats.items() if "latency_ratio_vs_fp32" in f}
        faster = [d for d, v in ratio.items() if v < 1 - LATENCY_BAND]
        slower = [d for d, v in ratio.items() if v > 1 + LATENCY_BAND]
        if faster and slower:
            flags.append(f"faster than FP32 on {', '.join(faster)}, slower on {', '.join(slower)}")
            odd |= {(d, "latency_ratio_vs_fp32") for d in slower}
        return flags, odd

    # -- tuner sections -------------------------------------------------------------------------
    def _ranking(self) -> tuple[charts.Chart | None, Table | None]:
        rows = [r for r in self.r.get("ranking", []) if isinstance(r, Mapping) and "node" in r] \
            if isinstance(self.r.get("ranking"), list) else []
        if not rows:
            return None, None
        methods = [m for m in dict.fromkeys(k for r in rows for k, v in r.items() if isinstance(v, Mapping)
                                            and "score" in v)]
        scores = {m: {i: as_number(as_map(r.get(m)).get("score")) for i, r in enumerate(rows)} for m in methods}
        rank_by = {m: {i: pos + 1 for pos, i in enumerate(sorted((i for i, s in scores[m].items() if s is not None),
                                                                 key=lambda i: -scores[m][i]))} for m in methods}
        details = {m: columns(flatten({k: v for k, v in as_map(r.get(m)).items() if k != "score"}) for r in rows)
                   for m in methods}
        primary = str(self.r.get("ranking_method") or self.settings.get("ranking_method") or "")
        cols = [Column("rank", "rank", f"order the search used ({METHOD_NAMES.get(primary, primary) or 'primary'})",
                       True), Column("node", "node"), Column("op", "op")]
        for m in methods:
            name = METHOD_NAMES.get(m, m)
            cols += [Column(f"{name} score", f"{m}-score", "higher = more sensitive", True),
                     Column(f"{name} rank", f"{m}-rank", numeric=True)]
            cols += [Column(f"{name} {d.label}", css_key(f"{m}-{d.key}"), d.title, True) for d in details[m]]
        table = Table("ranking", cols)
        for i, r in enumerate(rows):
            cells = [Cell(text(r.get("rank", i + 1)), as_number(r.get("rank")) or i + 1), Cell(text(r.get("node"))),
                     Cell(text(r.get("op_type", "")))]
            for m in methods:
                flat = flatten(as_map(r.get(m)))
                cells += [metric_cell(Metric("score", "score"), scores[m][i]),
                          Cell(str(rank_by[m].get(i, "-")), rank_by[m].get(i, ""))]
                cells += [metric_cell(d, flat.get(d.key)) for d in details[m]]
            table.rows.append(Row(cells))
        bars = []
        norm = {m: _normaliser(scores[m].values()) for m in methods}
        for i, r in enumerate(rows[:RANKING_BARS]):
            values = tuple(norm[m](scores[m][i]) for m in methods)
            titles = tuple(f"{text(r.get('node'))}: {METHOD_NAMES.get(m, m)} score {fmt(None, scores[m][i])}, "
                           f"rank {rank_by[m].get(i, '-')}" for m in methods)
            bars.append(charts.BarRow(text(r.get("node")), values, titles))
        chart = charts.hbars(f"most sensitive layers (top {len(bars)} by "
                             f"{METHOD_NAMES.get(primary, primary) or 'the primary method'})", bars,
                             [METHOD_NAMES.get(m, m) for m in methods],
                             caption="each method's score scaled to [0, 1] over all layers")
        return chart, table

    def _recipe_probe(self) -> list[Block]:
        if "recipe_probe" not in self.r:
            return []
        probe = self.r["recipe_probe"]
        blocks = []
        sections = [(str(k), v) for k, v in as_map(probe).items() if isinstance(v, Mapping) and "measured" in v]
        if isinstance(probe, Mapping) and "measured" in probe:
            sections = [("", probe)]
        for device, section in sections:
            chosen = section.get("chosen")
            items = [{"recipe": name, **as_map(m), "chosen": name == chosen}
                     for name, m in as_map(section.get("measured")).items()]
            title = f"{device}: " if device else ""
            block = Block(f"{title}chosen recipe {text(chosen)}", records(f"probe-{len(blocks)}", items,
                                                                          ("recipe", "chosen", "candidate")))
            block.facts = [(k, v) for k, v in facts(as_map(section.get("settings")), "settings.")]
            blocks.append(block)
        if not blocks:
            blocks = self._generic("recipe probe", probe)
        return blocks

    def _blame(self) -> list[Block]:
        blame = self.r.get("blame")
        if blame is None:
            return []
        if not isinstance(blame, Mapping):
            return self._generic("blame", blame)
        blocks = []
        for device, entries in blame.items():
            if isinstance(entries, list):
                blocks.append(Block(str(device), records(f"blame-{len(blocks)}", entries,
                                                         ("candidate", "blamed_nodes", "explained_by", "probes",
                                                          "retried_excluded", "retried_status"))))
            else:
                blocks.append(Block(str(device), facts=[(str(device), text(entries))]))
        return blocks

    def _history(self) -> charts.Chart:
        all_flats = [f for d in self.devices for f in self.flats[d].values()]
        metric = _first_metric(FIDELITY_KEYS, all_flats) or KNOWN_BY_KEY["top1_agreement"]
        timed = all(_timestamp(c.results[d].get("finished_at")) is not None
                    for d in self.devices for c in self.candidates if d in c.results) and bool(all_flats)
        t0 = min((_timestamp(c.results[d].get("finished_at")) for d in self.devices for c in self.candidates
                  if d in c.results), default=0.0) if timed else 0.0
        series: dict[str, list[charts.Step]] = {}
        for d in self.devices:
            steps = []
            for c in self.candidates:
                if d not in c.results:
                    continue
                flat = self.flats[d][c.id]
                ok = self._status(c, d) == "ok" and metric.key in flat
                x = (_timestamp(c.results[d].get("finished_at")) - t0) if timed else c.index + 1
                value = axis_value(metric, flat[metric.key]) if ok else None
                label = (f"{d} #{c.index + 1} {c.short} ({c.describe()}): "
                         + (f"{metric.label} {fmt(metric, flat[metric.key])}" if ok else self._status(c, d)))
                steps.append(charts.Step(x, value, label, c.id))
            series[d] = sorted(steps, key=lambda s: s.index)
        target = None
        drop = next((as_number(as_map(as_map(self.per_device.get(d)).get("target")).get("max_agreement_drop"))
                     for d in self.devices), None)
        if drop is not None and metric.key == "top1_agreement":
            target = (1 - drop) * 100
        x_label = "seconds since the first result" if timed else "evaluation (order candidates were built)"
        return charts.history("search history", series, metric, x_label, target, metric.better != "lower",
                              caption="dots: each evaluation; line: best so far per device class")

    def _search(self) -> list[tuple[str, str]]:
        out = facts(as_map(self.r.get("search")), "search.") if isinstance(self.r.get("search"), Mapping) else []
        status = as_map(self.r.get("status"))
        if status.get("stopped_by"):
            out.append(("stopped by", text(status["stopped_by"])))
        for d in self.devices:
            line = as_map(as_map(self.per_device.get(d)).get("target")).get("line")
            if line:
                out.append((f"target on {d}", text(line)))
        return out

    def _others(self) -> list[Block]:
        blocks = []
        for key, value in self.r.items():
            if key not in KNOWN_SECTIONS:
                blocks += self._generic(str(key), value)
        return blocks

    def _generic(self, title: str, value: Any, note: str = "") -> list[Block]:
        heading = f"{title} ({note})" if note else title
        if isinstance(value, list) and any(isinstance(v, Mapping) for v in value):
            return [Block(heading, records(f"generic-{css_key(title)}", value))]
        if isinstance(value, Mapping):
            lists = {k: v for k, v in value.items() if isinstance(v, list) and any(isinstance(i, Mapping) for i in v)}
            rest = {k: v for k, v in value.items() if k not in lists}
            blocks = [Block(heading, facts=facts(rest))] if rest or not lists else []
            for k, v in lists.items():
                blocks.append(Block(f"{title}.{k}", records(f"generic-{css_key(title)}-{css_key(str(k))}", v)))
            return blocks
        return [Block(heading, facts=[(title, text(value))])]


def _cand_cell(c: Candidate, rec: str | None, recommended_on: Sequence[str] = ()) -> Cell:
    badge = " ★" if c.id == rec or recommended_on else ""
    title = f"{c.id}: {c.describe()}" + (f"; recommended on {', '.join(recommended_on)}" if recommended_on else "")
    if c.excluded:
        title += "; float: " + ", ".join(c.excluded)
    return Cell(c.short + badge, c.index, "cand", text(title))


def _runtime(value: Any) -> str:
    info = as_map(value)
    if not info:
        return text(value) if value is not None else "-"
    return " ".join(text(info[k]) for k in ("runtime", "version", "options") if info.get(k))


def _first_metric(keys: Sequence[str], flats: Sequence[Mapping[str, float]]) -> Metric | None:
    for key in keys:
        if any(key in f for f in flats):
            return KNOWN_BY_KEY[key]
    return None


def _normaliser(values):
    numbers = [v for v in values if v is not None]
    lo, hi = (min(numbers), max(numbers)) if numbers else (0.0, 1.0)
    span = hi - lo

    def scale(v: float | None) -> float | None:
        if v is None:
            return None
        return 1.0 if span <= 0 else (v - lo) / span
    return scale


def _timestamp(value: Any) -> float | None:
    """Seconds of a result's `finished_at` (epoch seconds or ISO 8601)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value).timestamp()
        except ValueError:
            return None
    return None
