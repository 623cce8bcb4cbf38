"""The bound on what a running campaign creates: a campaign may not have more than
`max_campaign_candidates` distinct candidates, whatever its strategy proposes."""
from __future__ import annotations

import threading
from typing import Callable, Sequence

from coordinator.farm.scheduler import LeasePolicy, Scheduler
from coordinator.farm.store import Store
from shared.limits import Limits
from shared.pb.qfarm.v1 import job_pb2


class BoundedScheduler(Scheduler):
    """A Scheduler that refuses a campaign's candidate job once the campaign has
    `max_campaign_candidates` distinct candidates: the campaign then fails naming the limit. This
    bounds strategies without a cap (greedy over a large model), which the submit check cannot."""

    def __init__(self, store: Store, policy: LeasePolicy, clock: Callable[[], float], limits: Limits):
        super().__init__(store, policy, clock, max_agents=limits.max_agents)
        self.limits = limits
        self._candidates: dict[str, set[str]] = {}
        self._guard = threading.Lock()

    def _known(self, campaign_id: str) -> set[str]:
        if campaign_id not in self._candidates:    # first sight (e.g. after a restart): what the store has
            with self.store.transaction() as c:
                self._candidates[campaign_id] = c.campaign_candidate_ids(campaign_id)
        return self._candidates[campaign_id]

    def submit_many(self, jobs: Sequence[job_pb2.Job], kind: str, priority: int, campaign_id: str):
        if kind == "candidate":
            with self._guard:
                known = self._known(campaign_id)
                for job in jobs:
                    if job.candidate.id not in known:
                        self.limits.check("max_campaign_candidates", len(known) + 1,
                                          f"the number of candidates of campaign {campaign_id}")
                        known.add(job.candidate.id)
        return super().submit_many(jobs, kind, priority, campaign_id)
