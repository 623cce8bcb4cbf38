"""The fleet summary of a campaign: for each model (rows) on each device class (column groups),
the candidate to ship, or none and why, with what it costs and gains against FP32 on that class.

Everything comes from each model's report.json as written (its `pareto.per_device[<device>]`
decision and the candidates' results there); nothing is decided again here. Reports may be partial
(a running campaign) or missing (a model not started yet): those cells say so. The same picks feed
the page table (index.html, the dashboard) and the console table."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Mapping, Sequence

from coordinator.html.metrics import KNOWN_BY_KEY, fmt
from coordinator.html.reading import as_list, as_map, as_number
from coordinator.html.tables import Cell, Column, Row, Table, text
from coordinator.measures import FASTER, SLOWER, UNMEASURED, WITHIN_NOISE, latency_ratio, speed, sqnr
from coordinator.policy import DOES_NOT_PAY, NOTHING_MEASURED, PAYS

INDEX_FILE = "index.html"
#: the verdict's opening words that explain a missing recommendation in a few words
_SHORT_VERDICTS = ((DOES_NOT_PAY, DOES_NOT_PAY), (NOTHING_MEASURED, "nothing measured yet"),
                   (PAYS, "no eligible candidate"))

_SPEED = {FASTER: "faster than FP32 beyond the noise", SLOWER: "slower than FP32 beyond the noise",
          WITHIN_NOISE: "as fast as FP32 within the noise", UNMEASURED: "latency not measured"}


@dataclass(frozen=True)
class Pick:
    """One model on one device class: what its report recommends there."""

    device: str
    decided: bool                       # the report has a decision for this class (else: still waiting)
    recommended: str | None = None
    verdict: str = ""
    reason: str = ""
    float_layers: int | None = None
    ratio: float | None = None          # candidate p50 / FP32 p50 on the class
    speed: str = UNMEASURED             # faster / within noise / slower than FP32 (coordinator/measures.py)
    p10: float | None = None
    p90: float | None = None
    agreement: float | None = None
    sqnr_db: float | None = None
    size_fraction: float | None = None  # candidate size / FP32 size
    target_met: bool | None = None      # None: no target set
    target_line: str = ""

    @property
    def pays(self) -> bool:
        return not self.verdict.startswith(DOES_NOT_PAY)

    @property
    def ships(self) -> bool:
        """Recommended and worth it: not a candidate recommended anyway though slower (allow_slower)."""
        return bool(self.recommended) and self.pays and self.speed != SLOWER

    @property
    def ship(self) -> str:
        """The candidate id, or 'none — <why, in a few words>'."""
        if self.recommended:
            return self.recommended
        if not self.decided:
            return "waiting"
        why = next((short for opening, short in _SHORT_VERDICTS if self.verdict.startswith(opening)),
                   self.reason.split(";")[0] or "no recommendation")
        return f"none — {why}"

    @property
    def ratio_text(self) -> str:
        if self.ratio is None:
            return "-"
        spread = f" ({self.p10:.2f}-{self.p90:.2f})" if self.p10 is not None and self.p90 is not None else ""
        return f"{self.ratio:.2f}x{spread}"

    @property
    def fidelity_text(self) -> str:
        agree = fmt(KNOWN_BY_KEY["top1_agreement"], self.agreement) if self.agreement is not None else ""
        db = f"{self.sqnr_db:.1f} dB" if self.sqnr_db is not None else ""
        return " / ".join(x for x in (agree and agree + "%", db) if x) or "-"

    @property
    def target_text(self) -> str:
        return {True: "met", False: "missed"}.get(self.target_met, "-") if self.decided else "-"

    @property
    def size_text(self) -> str:
        return "-" if self.size_fraction is None else f"{self.size_fraction * 100:.0f}%"


@dataclass(frozen=True)
class ModelRow:
    name: str
    href: str                           # its report page ("" when it has none yet)
    state: str                          # the report's state, or "waiting" without a report
    model_file: str
    candidates: int
    picks: Mapping[str, Pick]


@dataclass
class Fleet:
    devices: list[str]
    rows: list[ModelRow]
    notes: list[str] = field(default_factory=list)

    def table(self, table_id: str = "fleet") -> Table:
        """Rows of models, a column group per device class (see Pick)."""
        cols = [Column("model", "model"), Column("state", "state"),
                Column("candidates", "candidates", "candidates built", True)]
        groups: list[tuple[str, int]] = [("", len(cols))]
        for i, d in enumerate(self.devices):
            group = [Column("ship", f"d{i}-ship", f"{d}: the candidate to ship (full id in the tooltip)"),
                     Column("p50 / FP32", f"d{i}-ratio", f"{d}: {KNOWN_BY_KEY['latency_ratio_vs_fp32'].title}; "
                            "in brackets the 10th-90th percentile of the interleaved pairs", True),
                     Column("agree / SQNR", f"d{i}-fidelity", f"{d}: {KNOWN_BY_KEY['top1_agreement'].title}; "
                            f"{KNOWN_BY_KEY['output_sqnr_db'].title}", True),
                     Column("size", f"d{i}-size", f"{d}: file size as a share of FP32's", True),
                     Column("target", f"d{i}-target", f"{d}: whether the campaign's target is met")]
            cols += group
            groups.append((d, len(group)))
        table = Table(table_id, cols, groups=groups)
        for r in self.rows:
            cells = [Cell(r.name, href=r.href, title=r.model_file), Cell(r.state, cls=f"state-{r.state}"),
                     Cell(str(r.candidates), r.candidates)]
            for d in self.devices:
                p = r.picks.get(d) or Pick(d, False)
                cells += _cells(p)
            table.rows.append(Row(cells))
        return table


def _cells(p: Pick) -> list[Cell]:
    title = p.recommended or ""
    if p.recommended and p.float_layers is not None:
        title += f": {p.float_layers} float layer{'s' if p.float_layers != 1 else ''}"
    if p.verdict:
        title += ("; " if title else "") + p.verdict
    folded = p.verdict if p.decided and not p.ships else ""
    cls = "ship" if p.ships else ("waiting" if not p.decided else "none")
    out = [Cell(p.ship[:10] if p.recommended else p.ship, p.ship, cls, text(title), detail=text(folded),
                detail_label="verdict"),
           Cell(p.ratio_text, _sort(p.ratio), "bad" if p.speed == SLOWER else "", _SPEED[p.speed]),
           Cell(p.fidelity_text, _sort(p.agreement if p.agreement is not None else p.sqnr_db)),
           Cell(p.size_text, _sort(p.size_fraction)),
           Cell(p.target_text, cls={True: "met", False: "missed"}.get(p.target_met, ""), title=text(p.target_line))]
    return out


def _sort(value: float | None) -> float | str:
    return "" if value is None else value


def pick(report: Mapping, device: str) -> Pick:
    """What `report` decided for `device`, with the recommended candidate's numbers there."""
    decision = as_map(as_map(as_map(report.get("pareto")).get("per_device")).get(device))
    if not decision:
        return Pick(device, False)
    policy = as_map(decision.get("policy"))
    target = as_map(decision.get("target"))
    rec = decision.get("recommended") if isinstance(decision.get("recommended"), str) else None
    base = dict(device=device, decided=True, recommended=rec, verdict=str(policy.get("verdict") or ""),
                reason=str(policy.get("reason") or decision.get("reason") or ""),
                target_met=target.get("met") if isinstance(target.get("met"), bool) else None,
                target_line=str(target.get("line") or ""))
    candidate = next((c for c in as_list(report.get("candidates")) if isinstance(c, Mapping) and c.get("id") == rec),
                     None) if rec else None
    result = as_map(as_map(as_map(candidate).get("results")).get(device))
    if not result:
        return Pick(**base)
    fp32 = as_map(as_map(report.get("fp32")).get(device))
    size = as_number(candidate.get("size_bytes")) or as_number(result.get("size_bytes"))
    full = as_number(fp32.get("size_bytes")) or as_number(as_map(report.get("model")).get("size_bytes"))
    excluded = candidate.get("excluded_nodes")
    return Pick(**base, float_layers=len(excluded) if isinstance(excluded, list) else None,
                ratio=latency_ratio(result, fp32), speed=speed(result, fp32), p10=as_number(result.get("latency_ratio_p10")),
                p90=as_number(result.get("latency_ratio_p90")), agreement=as_number(result.get("top1_agreement")),
                sqnr_db=sqnr(result), size_fraction=size / full if size and full else None)


def fleet(models: Sequence[tuple[str, Mapping | None, str]], devices: Sequence[str] = ()) -> Fleet:
    """The summary of `models`: (name, its report or None when it has none yet, link to its page).
    Device classes: `devices` first (the campaign's), then any other a report names."""
    seen = dict.fromkeys(devices)
    for _, report, _ in models:
        for d in as_list(as_map(report).get("devices")):
            if isinstance(d, str):
                seen.setdefault(d)
    out = Fleet(list(seen), [])
    for name, report, href in models:
        if not isinstance(report, Mapping):
            out.rows.append(ModelRow(name, "", "waiting", "", 0, {}))
            out.notes.append(f"{name}: no report yet")
            continue
        state = str(as_map(report.get("status")).get("state") or "unknown")
        if state != "done":
            out.notes.append(f"{name}: {state}, not done: its picks may still change")
        candidates = as_list(report.get("candidates"))
        file = PurePath(str(as_map(report.get("model")).get("path") or "")).name
        out.rows.append(ModelRow(name, href, state, file, len(candidates), {d: pick(report, d) for d in out.devices}))
    return out
