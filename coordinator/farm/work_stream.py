"""An agent's Work stream (farm.proto): its jobs and results on one long-lived call.

A job costs two unary calls otherwise (a Lease, a ReportResult), each with gRPC's per-call work,
the gate's token check and a transaction of its own; on the stream it is one message each way and
one transaction that records the result and leases the next job. The agent grants credit (jobs it
can take); while credit is left and nothing of its class is queued, the stream waits like a
Lease long-poll (waiters.py: a future, no thread) and goes on reading meanwhile, so a result or
more credit is never held up by the wait. Messages are handled one at a time, in order: gRPC's
flow control holds back an agent that sends faster than the coordinator records.

Every rule of the unary calls holds per message (the same scheduler code, `Scheduler.work`); a
message the unary call would refuse ends the stream with that call's status, after the answers
already sent. An agent that half-closes the stream takes its credit back (draining); one whose
registration is no longer alive gets its result recorded, then the error that tells it to
register again. A newer wait of the same agent (another Work stream or a Lease long-poll) ends
this one, so an agent holds at most one wait."""
from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator

from coordinator.farm.fields import check_report
from shared.auth import AgentIdentity
from shared.errors import FailedPrecondition, InvalidArgument
from shared.limits import MAX_WORK_CREDIT
from shared.pb.qfarm.v1 import farm_pb2, job_pb2

def read_request(request: farm_pb2.WorkRequest, agent: AgentIdentity,
                 ) -> tuple[int, job_pb2.DeviceResult | None, str]:
    """(more credit, the checked result or None, its FP32 outputs sha) of one message."""
    if not 0 <= request.more_jobs <= MAX_WORK_CREDIT:
        raise InvalidArgument(f"more_jobs={request.more_jobs} must be 0 to {MAX_WORK_CREDIT}", step="work")
    if not request.HasField("result"):
        return request.more_jobs, None, ""
    return (request.more_jobs, *check_report(request.result, agent))


async def serve(coord: Any, agent: AgentIdentity,
                requests: AsyncIterator[farm_pb2.WorkRequest]) -> AsyncIterator[farm_pb2.WorkResponse]:
    """The responses of one agent's stream, until the agent half-closes it (or an error ends it).
    `coord`: the server's Coordinator (server.py, which imports this module)."""
    loop = asyncio.get_running_loop()
    max_wait = coord.config.policy.max_wait_s
    device = coord.agent_devices.get(agent.agent_id)
    credit = 0
    reading = asyncio.ensure_future(anext(requests))
    try:
        while True:
            result, fp32 = None, ""
            if reading.done() or credit == 0:
                try:
                    request = await reading
                except StopAsyncIteration:
                    return                                 # half-closed: the agent took its credit back
                reading = asyncio.ensure_future(anext(requests))
                more, result, fp32 = read_request(request, agent)
                credit = min(credit + more, MAX_WORK_CREDIT)
                if result is None and not credit:
                    continue                               # nothing to record, nothing to lease
            since = coord.waiters.version(device) if device is not None else None
            outcome = await coord.in_short(coord.scheduler.work, agent, result, fp32, credit)
            device = coord.agent_devices[agent.agent_id] = outcome.device
            if outcome.jobs:
                credit -= len(outcome.jobs)
                coord.presence.forget(agent.agent_id)      # busy now: its heartbeats go through the store
                coord.waiters.wake_one(device)             # there may be more: the next waiter looks
            if outcome.jobs or outcome.report is not None:
                response = farm_pb2.WorkResponse(jobs=outcome.jobs)
                if outcome.report is not None:
                    response.result_of.job_id, response.result_of.attempt = result.job_id, result.attempt
                    response.result.accepted, response.result.duplicate = (outcome.report.accepted,
                                                                            outcome.report.duplicate)
                    response.result.reason = outcome.report.reason
                if outcome.jobs:
                    coord.stats.add("job_bytes_sent", response.ByteSize())
                yield response
            if outcome.not_alive is not None:
                raise outcome.not_alive
            if credit and not outcome.jobs and not reading.done():
                if since is None:
                    since = coord.waiters.version(device)
                deadline = loop.time() + max_wait
                waiting = asyncio.ensure_future(coord.waiters.wait(agent.agent_id, device, since, max_wait))
                try:
                    await asyncio.wait((waiting, reading), return_when=asyncio.FIRST_COMPLETED)
                except BaseException:          # the call ended (the agent went, the server stops)
                    waiting.cancel()
                    raise
                if not waiting.done():
                    waiting.cancel()
                elif not waiting.result() and loop.time() < deadline - 0.01 and not reading.done():
                    raise FailedPrecondition("a newer Lease or Work call of this agent is waiting for its jobs: "
                                             "this stream ends", step="work")
    finally:
        reading.cancel()
