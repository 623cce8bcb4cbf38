"""Prometheus metrics of the farm (prometheus-client): agents by device class and state, jobs by
state, results and crashes by device class (read from the store at each scrape, so they survive a
restart and need no bookkeeping), and two histograms fed as jobs move: how long a job waited in the
queue before an agent leased it, and how long a lease took to report its result."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from coordinator.farm.states import JobState

BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _StoreCollector(Collector):
    def __init__(self, store):
        self.store = store

    def collect(self):
        with self.store.transaction() as c:
            agents = c.execute("SELECT device, state, COUNT(*) FROM agents GROUP BY device, state").fetchall()
            jobs = c.execute("SELECT device, state, COUNT(*) FROM jobs GROUP BY device, state").fetchall()
            results = c.execute("SELECT jobs.device, results.status, COUNT(*) FROM results JOIN jobs "
                                "ON jobs.job_id = results.job_id GROUP BY jobs.device, results.status").fetchall()
        gauge = GaugeMetricFamily("qfarm_agents", "Agents known to the coordinator", labels=["device", "state"])
        for device, state, n in agents:
            gauge.add_metric([device, state], n)
        yield gauge
        gauge = GaugeMetricFamily("qfarm_jobs", "Jobs by device class and state", labels=["device", "state"])
        for device, state, n in jobs:
            gauge.add_metric([device, state], n)
        yield gauge
        counter = CounterMetricFamily("qfarm_results", "Results recorded, by device class and status",
                                      labels=["device", "status"])
        crashes = CounterMetricFamily("qfarm_crashes", "Results that were crashes or unsupported models, "
                                      "by device class", labels=["device"])
        crashed: dict[str, int] = {}
        for device, status, n in results:
            counter.add_metric([device, status], n)
            if status != "ok":
                crashed[device] = crashed.get(device, 0) + n
        for device, n in crashed.items():
            crashes.add_metric([device], n)
        yield counter
        yield crashes


class FarmMetrics:
    """One registry per coordinator (tests run several in one process)."""

    def __init__(self, store):
        self.registry = CollectorRegistry()
        self.registry.register(_StoreCollector(store))
        self.lease_wait = Histogram("qfarm_lease_wait_seconds", "Time a job waited in the queue until leased",
                                    ["device"], buckets=BUCKETS, registry=self.registry)
        self.report_latency = Histogram("qfarm_report_latency_seconds", "Time from a lease to its result",
                                        ["device"], buckets=BUCKETS, registry=self.registry)

    def on_job_transition(self, device: str, before: JobState, after: JobState, seconds: float) -> None:
        """Store listener: called inside the transaction that moves a job, so it must stay cheap."""
        if before == JobState.QUEUED and after == JobState.LEASED:
            self.lease_wait.labels(device).observe(max(0.0, seconds))
        elif before == JobState.LEASED and after == JobState.DONE:
            self.report_latency.labels(device).observe(max(0.0, seconds))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
