"""What the dashboard shows, read from the running coordinator: agents and campaign progress from
the same status call the gRPC API answers, running jobs and recent results from the store, and the
campaign's report as it fills in. Plain values and tables; the templates escape everything."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote

from google.protobuf.json_format import MessageToDict

from coordinator.farm.describe import runtime_text, slots_text
from coordinator.html.fleet import Fleet, fleet
from coordinator.html.metrics import columns, flatten
from coordinator.html.tables import Cell, Column, Row, Table, css_key, metric_cell, text
from shared.errors import NotFound
from shared.pb.qfarm.v1 import farm_pb2, job_pb2

RECENT_RESULTS = 25


@dataclass(frozen=True)
class Progress:
    device: str
    done: int
    total: int
    leased: int
    queued: int
    agents: int

    @property
    def percent(self) -> float:
        return 100.0 * self.done / self.total if self.total else 0.0


@dataclass
class CampaignSummary:
    id: str
    name: str
    state: str
    message: str
    updated: str
    progress: list[Progress]

    @property
    def done(self) -> int:
        return sum(p.done for p in self.progress)

    @property
    def total(self) -> int:
        return sum(p.total for p in self.progress)


@dataclass
class Overview:
    agents: Table
    campaigns: list[CampaignSummary]
    stats: list[tuple[str, str]]


@dataclass
class CampaignDetail:
    summary: CampaignSummary
    running: Table
    recent: Table
    failures: Table
    counts: list[tuple[str, str]] = field(default_factory=list)


def _when(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC") if epoch else "-"


def _summary(c: farm_pb2.CampaignStatus) -> CampaignSummary:
    return CampaignSummary(c.campaign_id, c.name, c.state, c.message, _when(c.updated_at),
                           [Progress(d.device, d.done, d.total, d.leased, d.queued, d.agents) for d in c.devices])


def overview(coord) -> Overview:
    resp = coord.status("")
    table = Table("agent-list", [Column("agent", "agent"), Column("name", "name"), Column("device class", "device"),
                             Column("state", "state"), Column("slots", "slots"), Column("jobs", "jobs", numeric=True),
                             Column("last heartbeat", "heartbeat", "seconds ago", True), Column("runtime", "runtime"),
                             Column("host", "host")])
    for a in resp.agents:
        host = a.capabilities.host
        table.rows.append(Row([Cell(a.agent_id), Cell(a.name), Cell(a.device), Cell(a.state, cls=f"state-{a.state}"),
                               Cell(slots_text(a)), Cell(str(len(a.jobs)), len(a.jobs), title=", ".join(a.jobs)),
                               Cell(f"{a.last_heartbeat_age_s:.1f} s ago", a.last_heartbeat_age_s),
                               Cell(runtime_text(a.capabilities.runtime)),
                               Cell(f"{host.cpu_model} x{host.cores} {host.arch}".strip())]))
    stats = [(k.replace("_", " "), str(v)) for k, v in MessageToDict(resp.stats, preserving_proto_field_name=True,
                                                                     always_print_fields_with_no_presence=True).items()]
    return Overview(table, [_summary(c) for c in resp.campaigns], stats)


def campaign(coord, campaign_id: str) -> CampaignDetail:
    """One campaign: progress, running jobs, the most recent results and every failure with its cause."""
    try:
        [status] = coord.status(campaign_id).campaigns
    except ValueError:
        raise NotFound(f"campaign {campaign_id!r} does not exist", step="dashboard") from None
    now = coord.config.clock()
    with coord.store.transaction() as c:
        ids = c.campaign_job_ids(campaign_id)
        wanted = set(ids)
        leased = [j for j in c.leased_jobs() if j.job_id in wanted]
        results = c.results(ids)
        jobs = {j: c.job(j) for j in results}
        names = {a.agent_id: a.name for a in c.agents()}
    running = Table("running-jobs", [Column("job", "job"), Column("kind", "kind"), Column("device class", "device"),
                                Column("candidate", "candidate"), Column("agent", "agent"),
                                Column("attempt", "attempt", numeric=True),
                                Column("lease left", "lease", "seconds until the lease expires", True)])
    for j in leased:
        left = (j.lease_deadline or now) - now
        running.rows.append(Row([Cell(j.job_id[:12], title=j.job_id), Cell(j.kind), Cell(j.device),
                                 Cell(j.candidate_id[:10], title=j.candidate_id),
                                 Cell(names.get(j.agent_id or "", j.agent_id or "-")),
                                 Cell(str(j.attempt), j.attempt), Cell(f"{left:.1f} s", left)]))
    decoded = {job_id: _result_dict(row.payload) for job_id, row in results.items()}
    order = sorted(results, key=lambda job_id: results[job_id].received_at, reverse=True)
    recent_ids = order[:RECENT_RESULTS]
    metrics = columns(flatten(decoded[j]) for j in recent_ids if results[j].status == "ok")
    recent = Table("recent-results", [Column("received", "received", numeric=True), Column("kind", "kind"),
                              Column("device class", "device"), Column("candidate", "candidate"),
                              Column("agent", "agent"), Column("status", "status")] +
                   [Column(m.label, css_key(m.key), m.title, True) for m in metrics])
    for job_id in recent_ids:
        row, job, result = results[job_id], jobs[job_id], decoded[job_id]
        flat = flatten(result) if row.status == "ok" else {}
        recent.rows.append(Row([Cell(f"{now - row.received_at:.1f} s ago", row.received_at),
                                Cell(job.kind if job else "-"), Cell(job.device if job else "-"),
                                Cell((job.candidate_id if job else "-")[:10]), Cell(names.get(row.agent_id, row.agent_id)),
                                Cell(row.status, cls="" if row.status == "ok" else "bad")] +
                               [metric_cell(m, flat.get(m.key)) for m in metrics]))
    failures = Table("failure-list", [Column("received", "received", numeric=True), Column("device class", "device"),
                                  Column("candidate", "candidate"), Column("agent", "agent"), Column("status", "status"),
                                  Column("crash cause", "crash-cause")])
    for job_id in order:
        row, job, result = results[job_id], jobs[job_id], decoded[job_id]
        if row.status == "ok":
            continue
        failures.rows.append(Row([Cell(f"{now - row.received_at:.1f} s ago", row.received_at),
                                  Cell(job.device if job else "-"), Cell((job.candidate_id if job else "-")[:10]),
                                  Cell(names.get(row.agent_id, row.agent_id)), Cell(row.status, cls="bad"),
                                  Cell(text(result.get("crash_cause") or "-"),
                                       detail=text(result.get("stderr_tail") or ""))]))
    counts = [("results", str(len(results))), ("failures", str(len(failures.rows))), ("running", str(len(leased)))]
    return CampaignDetail(_summary(status), running, recent, failures, counts)


def _result_dict(payload: bytes) -> dict[str, Any]:
    """A stored DeviceResult's scalar fields by name (numbers stay numbers; the status enum is left out:
    the store keeps its name)."""
    result = job_pb2.DeviceResult.FromString(payload)
    return {fd.name: value for fd, value in result.ListFields()
            if fd.type != fd.TYPE_MESSAGE and fd.type != fd.TYPE_ENUM}


def live_reports(coord, campaign_id: str) -> list[tuple[str, dict | None]]:
    """Each model of the campaign, in the order they run, with its report.json as it stands (None:
    not started yet)."""
    import json

    names = coord.campaigns.model_names(campaign_id)
    try:
        _, files = coord.campaigns.report_files(campaign_id, json_only=True)
    except NotFound:
        files = []
    found = {}
    for path, data in files:
        folder, _, leaf = path.rpartition("/")
        if leaf == "report.json":
            found[folder or names[0]] = json.loads(data)      # one model: its files are at the top
    return [(name, found.get(name)) for name in names]


def report_href(campaign_id: str, model: str) -> str:
    return f"/campaigns/{quote(campaign_id, safe='')}/report?model={quote(model, safe='')}"


def campaign_fleet(campaign_id: str, reports: list[tuple[str, dict | None]], devices: list[str]) -> Fleet:
    """The fleet summary of a campaign as it fills in; each model links to its live report page."""
    return fleet([(name, report, report_href(campaign_id, name) if report is not None else "")
                  for name, report in reports], devices)


def model_report(reports: list[tuple[str, dict | None]], campaign_id: str, model: str) -> dict:
    """One model's report; NotFound (naming the campaign's models) for a model it does not have or
    one not started yet."""
    by_name = dict(reports)
    if model not in by_name:
        raise NotFound(f"campaign {campaign_id} has no model {text(model, 120)!r}; its models: "
                       f"{', '.join(by_name)}", step="dashboard")
    if by_name[model] is None:
        raise NotFound(f"model {model} of campaign {campaign_id} has no report yet: it has not started",
                       step="dashboard")
    return by_name[model]
