"""What idle agents cost the coordinator: numbers, not a timed test.

N protocol-level fake agents (real gRPC, the project's stubs, grpc.aio in this process) behave
like real idle agents of `agent/worker.py`: register, heartbeat every interval the coordinator
asks for, and keep a Lease long-poll open (the wait_s a real agent asks for, re-issued as soon as it returns). They run
against one `coordinator serve` process on loopback. After all have registered and a warm-up, the
bench measures over a window:

  * coordinator CPU seconds (user + system, psutil) and % of one core;
  * heartbeat latency p50 / p99 / max as the fake agents see it, and failed heartbeats;
  * Lease long-polls completed, and the agents the coordinator marked missing or evicted;
  * this bench process's own CPU (it shares the machine's cores with the coordinator).

    python bench/idle_agents.py --agents 1000 --seconds 60
    python bench/idle_agents.py --agents 100 --seconds 10          # a quick look

Say which CPU you ran on: `grep -o 'avx512_vnni\\|avx_vnni' /proc/cpuinfo | sort -u`, `nproc`, and
the load average (other work on the machine moves every number here)."""
from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.worker import AgentConfig  # noqa: E402
from shared.auth import AgentIdentity  # noqa: E402
from shared.pb.qfarm.v1 import farm_pb2, farm_pb2_grpc  # noqa: E402
from shared.version import PROTOCOL_VERSION  # noqa: E402

DEVICE = "bench-idle"
LEASE_WAIT_S = AgentConfig.lease_wait_s     # what a real idle agent asks for


class Stats:
    def __init__(self) -> None:
        self.measuring = False
        self.heartbeat_s: list[float] = []
        self.heartbeat_failures: dict[str, int] = {}
        self.leases = 0
        self.lease_failures = 0
        self.register_retries = 0


async def fake_agent(index: int, stub: farm_pb2_grpc.AgentServiceStub, stats: Stats, registered: asyncio.Event,
                     stop: asyncio.Event, count: list[int], total: int) -> None:
    caps = farm_pb2.AgentCapabilities(slots=1, protocol_version=PROTOCOL_VERSION,
                                      host=farm_pb2.HostInfo(hostname=f"fake-{index}", cores=1))
    while True:
        try:
            resp = await stub.Register(farm_pb2.RegisterRequest(device=DEVICE, name=f"fake-{index}",
                                                                capabilities=caps), timeout=30)
            break
        except grpc.aio.AioRpcError:
            stats.register_retries += 1
            await asyncio.sleep(0.2 + random.random())
    identity = AgentIdentity(resp.agent_id, resp.agent_secret)
    metadata = identity.metadata()
    count[0] += 1
    if count[0] == total:
        registered.set()

    async def heartbeats() -> None:
        await asyncio.sleep(random.random() * resp.heartbeat_interval_s)     # agents do not start in lockstep
        while not stop.is_set():
            started = time.perf_counter()
            try:
                await stub.Heartbeat(farm_pb2.HeartbeatRequest(agent_id=identity.agent_id, free_slots=1),
                                     metadata=metadata, timeout=10)
                if stats.measuring:
                    stats.heartbeat_s.append(time.perf_counter() - started)
            except grpc.aio.AioRpcError as exc:
                if stats.measuring:
                    code = exc.code().name
                    stats.heartbeat_failures[code] = stats.heartbeat_failures.get(code, 0) + 1
            await asyncio.sleep(max(0.0, resp.heartbeat_interval_s - (time.perf_counter() - started)))

    async def long_polls() -> None:
        while not stop.is_set():
            try:
                await stub.Lease(farm_pb2.LeaseRequest(agent_id=identity.agent_id, max_jobs=1, wait_s=LEASE_WAIT_S),
                                 metadata=metadata, timeout=LEASE_WAIT_S + 30)
                if stats.measuring:
                    stats.leases += 1
            except grpc.aio.AioRpcError:
                if stats.measuring:
                    stats.lease_failures += 1
                await asyncio.sleep(0.2)

    await asyncio.gather(heartbeats(), long_polls())


def agent_states(address: str) -> dict[str, int]:
    with grpc.insecure_channel(address) as channel:
        status = farm_pb2_grpc.CampaignServiceStub(channel).GetStatus(farm_pb2.GetStatusRequest(), timeout=60)
    counts: dict[str, int] = {}
    for agent in status.agents:
        counts[agent.state] = counts.get(agent.state, 0) + 1
    return counts


async def run(address: str, coordinator: psutil.Process, agents: int, seconds: float, warmup: float,
              channels: int) -> dict:
    stats, stop, registered, count = Stats(), asyncio.Event(), asyncio.Event(), [0]
    opened = [grpc.aio.insecure_channel(address) for _ in range(channels)]
    stubs = [farm_pb2_grpc.AgentServiceStub(c) for c in opened]
    started = time.monotonic()
    tasks = [asyncio.ensure_future(fake_agent(i, stubs[i % channels], stats, registered, stop, count, agents))
             for i in range(agents)]
    await asyncio.wait_for(registered.wait(), 300)
    registered_s = time.monotonic() - started
    await asyncio.sleep(warmup)
    loop = asyncio.get_running_loop()
    before = await loop.run_in_executor(None, agent_states, address)
    me = psutil.Process()
    cpu0, mine0, t0 = sum(coordinator.cpu_times()[:2]), sum(me.cpu_times()[:2]), time.monotonic()
    stats.measuring = True
    missing_seen = 0
    end = t0 + seconds
    while time.monotonic() < end:
        await asyncio.sleep(min(5.0, max(0.0, end - time.monotonic())))
        states = await loop.run_in_executor(None, agent_states, address)
        missing_seen = max(missing_seen, states.get("missing", 0) + states.get("evicted", 0))
    stats.measuring = False
    cpu1, mine1, t1 = sum(coordinator.cpu_times()[:2]), sum(me.cpu_times()[:2]), time.monotonic()
    after = await loop.run_in_executor(None, agent_states, address)
    stop.set()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for channel in opened:
        await channel.close()
    lat = sorted(stats.heartbeat_s)
    window = t1 - t0
    return {
        "agents": agents, "window_s": window, "registered_s": registered_s,
        "register_retries": stats.register_retries,
        "coordinator_cpu_s": cpu1 - cpu0, "coordinator_core_pct": 100 * (cpu1 - cpu0) / window,
        "bench_cpu_s": mine1 - mine0,
        "heartbeats": len(lat), "heartbeat_failures": stats.heartbeat_failures,
        "heartbeat_p50_ms": 1000 * statistics.median(lat) if lat else float("nan"),
        "heartbeat_p99_ms": 1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))] if lat else float("nan"),
        "heartbeat_max_ms": 1000 * lat[-1] if lat else float("nan"),
        "long_polls_done": stats.leases, "lease_failures": stats.lease_failures,
        "missing_or_evicted_max": missing_seen, "states_before": before, "states_after": after,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=60.0, help="measurement window")
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds after every agent registered")
    parser.add_argument("--channels", type=int, default=8, help="gRPC connections the fake agents share")
    parser.add_argument("--heartbeat-interval", type=float, default=2.0)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="qfarm-idle-") as tmp:
        port_file, log = Path(tmp) / "port", Path(tmp) / "coordinator.log"
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = subprocess.Popen(
            [sys.executable, "-m", "coordinator.cli", "serve", "--data-dir", str(Path(tmp) / "data"), "--port", "0",
             "--port-file", str(port_file), "--heartbeat-interval", str(args.heartbeat_interval),
             "--missing-after", str(3 * args.heartbeat_interval), "--evict-after", str(10 * args.heartbeat_interval),
             "--max-agents", str(max(10_000, args.agents)),
             # every fake agent calls from 127.0.0.1: lift the per-peer caps a fleet spread over hosts never meets
             "--max-calls-per-peer", str(max(128, 2 * args.agents)), "--max-calls", str(max(2048, 2 * args.agents)),
             "--max-lease-waits-per-peer", str(max(2048, 2 * args.agents))],
            stdout=open(log, "wb"), stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        try:
            deadline = time.monotonic() + 60
            while not (port_file.is_file() and port_file.read_text().strip()):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"coordinator did not start: {log.read_text()[-2000:]}")
                time.sleep(0.1)
            address = f"127.0.0.1:{port_file.read_text().strip()}"
            result = asyncio.run(run(address, psutil.Process(proc.pid), args.agents, args.seconds, args.warmup,
                                     args.channels))
        finally:
            proc.terminate()
            proc.wait(30)
    flags = sorted({f for f in ("avx512_vnni", "avx_vnni") if f in Path("/proc/cpuinfo").read_text()})
    print(f"machine: {os.cpu_count()} cores, cpu flags {flags or 'none'}, load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(f"{result['agents']} idle agents (heartbeat every {args.heartbeat_interval:g} s + Lease long-poll "
          f"wait_s={LEASE_WAIT_S:g}); all registered in {result['registered_s']:.1f} s "
          f"({result['register_retries']} registration retries)")
    print(f"window {result['window_s']:.1f} s: coordinator CPU {result['coordinator_cpu_s']:.2f} s = "
          f"{result['coordinator_core_pct']:.1f}% of one core; bench process CPU {result['bench_cpu_s']:.2f} s")
    print(f"heartbeats {result['heartbeats']} (failed: {result['heartbeat_failures'] or 'none'}): p50 "
          f"{result['heartbeat_p50_ms']:.1f} ms, p99 {result['heartbeat_p99_ms']:.1f} ms, max "
          f"{result['heartbeat_max_ms']:.1f} ms")
    print(f"long-polls completed {result['long_polls_done']} (failed {result['lease_failures']}); agents missing or "
          f"evicted at any status poll: {result['missing_or_evicted_max']}; states before {result['states_before']}, "
          f"after {result['states_after']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
