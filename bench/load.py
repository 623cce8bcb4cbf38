"""Load bench of the coordinator with Locust: fake agents that speak the real agent protocol
(bench/load_agents.py) against one `coordinator serve` process (bench/load_feeder.py: the real
command plus a job source), measured from outside with psutil. Numbers, not a timed test.

Phases, in one run against one coordinator:

  idle      N agents that behave like real idle agents for `--seconds` (after all registered and
            a warm-up): a heartbeat every interval the coordinator asks for, a Work stream always
            open and waiting for jobs. Coordinator CPU (user + sys) and % of one core, heartbeat
            latency p50/p99 from Locust's statistics and, apart from the bench process's own load,
            from one more agent heartbeating every 0.1 s in a process of its own
            (bench/load_probe.py), failed calls, agents the coordinator marked missing or evicted
            (every tick's outcome, counted in the coordinator process), their states at the end
            (GetStatus and the store).
  dispatch  for each `--queue-batch` and each K in `--k`: K fresh agents of their own device
            class; once each one's stream waits, `--jobs` jobs are queued through the scheduler
            (by default two sets of rounds: all in one transaction, which measures dispatch alone,
            then one transaction per job while the agents run, as a one-device campaign queues its
            candidates) and the agents take them on their streams, "run" them (`--job-s`) and
            report them there. Results fully processed per second (first job
            queued -> last result durable in SQLite, the coordinator's own timestamps),
            coordinator CPU per job, job and result latency on the stream, and the store checked:
            every job done with exactly one result, recorded by the agent that held its one lease.
  memory    the coordinator's RSS sampled every second over the whole run, per phase.

Targets (a 2-core machine; the tables say met / NOT met): idle 1000 agents < 50% of one core,
heartbeat p99 < 50 ms, 0 agents missing over 5 minutes; dispatch >= 1000 results/s at K >= 16,
<= 1 ms coordinator CPU per job, every job exactly one result.

    python bench/load.py                                   # 1000 agents x 300 s, K = 1..256 x 2, 2000 jobs each
    python bench/load.py --agents 200 --seconds 30 --k 16 --jobs 500 --json out.json
    python bench/load.py --phases dispatch --profile prof/  # py-spy on the coordinator per phase

Every fake agent calls from 127.0.0.1, so the per-peer call caps (meant for a fleet spread over
hosts) are lifted to fit them; everything else is `coordinator serve`'s defaults, tokens included
(separate agent and client tokens). The bench process shares the machine's cores with the
coordinator: its own CPU and the load average are printed with every table. Exit status 1 when a
correctness check fails (a job without exactly one result, an agent marked missing, a failed
call); timing targets only print."""
from __future__ import annotations

import argparse
import functools
import json
import os
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]

import load_agents  # noqa: E402  - first: it decides how Locust is imported (no monkey-patching)
import gevent  # noqa: E402
import grpc  # noqa: E402
import psutil  # noqa: E402
from locust.env import Environment  # noqa: E402

from load_agents import REQUEST_TYPE, Bridge, Connections, Plan, group  # noqa: E402
from load_feeder import MARK  # noqa: E402
from load_report import correctness, print_report, targets  # noqa: E402
from shared.auth import METADATA_KEY, SCHEME  # noqa: E402
from shared.pb.qfarm.v1 import farm_pb2, farm_pb2_grpc  # noqa: E402

SPAWN_RATE = 100.0        # agents started per second (Locust warns above 100)


def cpu_flags() -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    return sorted({flag for flag in ("avx512_vnni", "avx_vnni") if f" {flag}" in text})


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


#: the priority this process started at: the coordinator and the probe run at it (`at_start`)
START_PRIORITY = os.getpriority(os.PRIO_PROCESS, 0)


def lower_agents_priority(nice: int) -> int:
    """The fake agents stand in for devices on other machines, yet share this machine's cores with
    the coordinator: run them `nice` steps lower (this thread, and every thread and process it
    starts later), and put the coordinator and the probe back at START_PRIORITY (`restore`), so
    what the coordinator answers is not queued behind the load generator. Raising a priority back
    needs root (CAP_SYS_NICE): without it nothing changes. Returns the steps applied."""
    if nice <= 0 or os.geteuid() != 0:
        return 0
    for tid in os.listdir("/proc/self/task"):      # Linux: per thread; threads started later inherit it
        os.setpriority(os.PRIO_PROCESS, int(tid), START_PRIORITY + nice)
    return nice


def restore(proc: subprocess.Popen, again_after_s: float = 2.0) -> None:
    """Every thread of a child back at START_PRIORITY, now and once more when its start-up threads
    exist (threads it starts later inherit from these). From the parent: a preexec_fn would run
    Python in a forked child of a process with gRPC threads, which crashes."""
    def each_thread() -> None:
        try:
            for tid in os.listdir(f"/proc/{proc.pid}/task"):
                os.setpriority(os.PRIO_PROCESS, int(tid), START_PRIORITY)
        except (FileNotFoundError, ProcessLookupError):      # it has ended (or a thread has)
            return

    if os.getpriority(os.PRIO_PROCESS, 0) != START_PRIORITY:
        each_thread()
        gevent.spawn_later(again_after_s, each_thread)


def off_hub(fn, *args):
    """Blocking work (pipes, SQLite, a status call) on gevent's thread pool: the fake agents' greenlets
    keep running meanwhile (nothing in this process is monkey-patched)."""
    return gevent.get_hub().threadpool.apply(fn, args)


# ------------------------------------------------------------------------------------ the coordinator
class Coordinator:
    """`coordinator serve` (with the job source) as a child process, measured with psutil."""

    def __init__(self, work: Path, args: argparse.Namespace):
        self.agent_token, self.client_token = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        tokens = self.token_files = {}
        for role, token in (("agent", self.agent_token), ("client", self.client_token)):
            tokens[role] = work / f"{role}.token"
            tokens[role].write_text(token)
            tokens[role].chmod(0o600)
        self.data_dir, port_file, self.log = work / "data", work / "port", work / "coordinator.log"
        hb = args.heartbeat_interval
        lifted = str(max(4096, 4 * args.agents))
        cmd = [sys.executable, str(HERE / "load_feeder.py"), "--port", "0", "--port-file", str(port_file),
               "--data-dir", str(self.data_dir), "--agent-token-file", str(tokens["agent"]),
               "--client-token-file", str(tokens["client"]), "--heartbeat-interval", str(hb),
               "--missing-after", str(3 * hb), "--evict-after", str(10 * hb), "--shutdown-grace", "5",
               "--max-agents", str(max(10_000, 2 * args.agents)), "--max-calls", lifted, "--max-calls-per-peer", lifted,
               "--max-lease-waits", str(max(10_000, 2 * args.agents)), "--max-lease-waits-per-peer", lifted]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(self.log, "wb"),
                                     text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
        deadline = time.monotonic() + 120
        while not (port_file.is_file() and port_file.read_text().strip()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the coordinator did not start; its log:\n{self.log.read_text()[-3000:]}")
            gevent.sleep(0.1)
        restore(self.proc)           # its serving threads exist now
        self.address = f"127.0.0.1:{port_file.read_text().strip()}"
        self.ps = psutil.Process(self.proc.pid)
        self._status_channel = grpc.insecure_channel(self.address)

    def cpu_s(self) -> float:
        times = self.ps.cpu_times()
        return times.user + times.system

    def rss(self) -> int:
        return self.ps.memory_info().rss

    def command(self, op: str, **fields) -> dict:
        """One command to the job source in the coordinator process (load_feeder.py)."""
        return off_hub(self._command, op, fields)

    def _command(self, op: str, fields: dict) -> dict:
        self.proc.stdin.write(json.dumps({"op": op, **fields}) + "\n")
        self.proc.stdin.flush()
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise SystemExit(f"the coordinator exited; its log:\n{self.log.read_text()[-3000:]}")
            if line.startswith(MARK):
                answer = json.loads(line[len(MARK):])
                if "error" in answer:
                    raise SystemExit(f"the job source failed: {answer['error']}")
                return answer

    def status(self) -> farm_pb2.GetStatusResponse:
        stub = farm_pb2_grpc.CampaignServiceStub(self._status_channel)
        return off_hub(functools.partial(stub.GetStatus, farm_pb2.GetStatusRequest(), timeout=60,
                                         metadata=((METADATA_KEY, SCHEME + self.client_token),)))

    def store(self) -> sqlite3.Connection:
        """The coordinator's database, read-only (WAL: reading never blocks it)."""
        return sqlite3.connect(f"file:{self.data_dir / 'qfarm.sqlite3'}?mode=ro", uri=True, timeout=30)

    def stop(self) -> int:
        self._status_channel.close()
        if self.proc.poll() is None:
            self.proc.stdin.close()        # the job source stops the coordinator (SIGTERM: a clean shutdown)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


class Monitor:
    """The coordinator's CPU seconds and RSS, sampled every second on a greenlet."""

    def __init__(self, coord: Coordinator, every_s: float = 1.0):
        self.coord, self.every_s = coord, every_s
        self.samples: list[tuple[float, float, int]] = []       # (monotonic, cpu s, rss bytes)
        self._greenlet = gevent.spawn(self._run)

    def _run(self) -> None:
        while True:
            self.sample()
            gevent.sleep(self.every_s)

    def sample(self) -> tuple[float, float, int]:
        row = (time.monotonic(), self.coord.cpu_s(), self.coord.rss())
        self.samples.append(row)
        return row

    def rss_between(self, start: float, end: float) -> dict:
        rss = [s[2] for s in self.samples if start <= s[0] <= end] or [self.coord.rss()]
        return {"rss_start_mb": rss[0] / 2**20, "rss_end_mb": rss[-1] / 2**20, "rss_peak_mb": max(rss) / 2**20}

    def stop(self) -> None:
        self._greenlet.kill()


class Profiler:
    """py-spy on the coordinator over each measurement window (--profile DIR): collapsed stacks of
    the thread holding the GIL (`--gil`: where its Python CPU goes), one file per window, plus the
    coordinator's CPU seconds per OS thread name (gRPC's C threads are not in py-spy's view)."""

    def __init__(self, directory: Path | None, coord: Coordinator):
        self.directory, self.coord = directory, coord
        self._proc: subprocess.Popen | None = None
        self._threads0: dict[str, float] = {}
        self.threads: dict[str, dict[str, float]] = {}

    def thread_cpu(self) -> dict[str, float]:
        """CPU seconds per thread name (/proc/PID/task/*/comm), live threads only."""
        totals: dict[str, float] = {}
        for thread in self.coord.ps.threads():
            try:
                name = Path(f"/proc/{self.coord.ps.pid}/task/{thread.id}/comm").read_text().strip()
            except OSError:
                continue
            totals[name] = totals.get(name, 0.0) + thread.user_time + thread.system_time
        return totals

    def start(self, name: str) -> None:
        if self.directory is None:
            return
        exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        self.directory.mkdir(parents=True, exist_ok=True)
        self._name, self._threads0 = name, self.thread_cpu()
        self._proc = subprocess.Popen([exe, "record", "--pid", str(self.coord.ps.pid), "--rate", "200", "--gil",
                                       "--nonblocking", "--format", "raw", "-o", str(self.directory / f"{name}.txt")],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def finish(self) -> None:
        if self._proc is None:
            return
        after = self.thread_cpu()
        self.threads[self._name] = {k: round(v - self._threads0.get(k, 0.0), 2) for k, v in sorted(
            after.items(), key=lambda kv: -(kv[1] - self._threads0.get(kv[0], 0.0)))}
        self._proc.send_signal(signal.SIGINT)       # py-spy writes its file when interrupted
        try:
            off_hub(self._proc.wait, 60)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            off_hub(self._proc.wait)
        self._proc = None


class Probe:
    """bench/load_probe.py: one more agent heartbeating from a process of its own, timed there."""

    def __init__(self, coord: Coordinator):
        self._proc = subprocess.Popen([sys.executable, str(HERE / "load_probe.py"), "--address", coord.address,
                                       "--token-file", str(coord.token_files["agent"])], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, text=True, cwd=ROOT)
        restore(self._proc)

    def finish(self) -> dict:
        out, _ = off_hub(self._proc.communicate, "", 120)
        if self._proc.returncode:
            raise SystemExit(f"the heartbeat probe failed (exit status {self._proc.returncode})")
        return json.loads(out.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------ fake agents
@dataclass
class Swarm:
    """One Locust environment of fake agents of one plan."""

    env: Environment
    tally: load_agents.Tally
    connections: Connections

    @classmethod
    def start(cls, bridge: Bridge, coord: Coordinator, plan: Plan, agents: int, connections: int) -> "Swarm":
        """Start `agents` fake agents (SPAWN_RATE a second) and wait until every one registered."""
        conns = Connections(bridge, coord.address, max(1, min(connections, agents)))
        user_class, tally = group(plan, conns)
        env = Environment(user_classes=[user_class], host=coord.address)
        env.create_local_runner()
        env.runner.start(agents, spawn_rate=min(SPAWN_RATE, agents))
        deadline = time.monotonic() + agents / SPAWN_RATE + 120
        while tally.registered < agents:
            if tally.fatal:
                raise SystemExit(f"fake agents refused at registration: {tally.fatal[0]}")
            if time.monotonic() > deadline:
                raise SystemExit(f"only {tally.registered} of {agents} fake agents registered in time")
            gevent.sleep(0.05)
        return cls(env, tally, conns)

    def call_stats(self, name: str) -> dict:
        """Locust's statistics of one call name (latencies in ms, as Locust rounds them)."""
        entry = self.env.stats.get(name, REQUEST_TYPE)
        ok = entry.num_requests - entry.num_failures
        if not entry.num_requests:
            return {"calls": 0, "failures": 0}
        return {"calls": entry.num_requests, "failures": entry.num_failures,
                "p50_ms": entry.get_response_time_percentile(0.5) if ok else None,
                "p99_ms": entry.get_response_time_percentile(0.99) if ok else None,
                "max_ms": round(entry.max_response_time, 1)}

    def errors(self) -> dict[str, int]:
        return {f"{e.name}: {e.error}"[:300]: e.occurrences for e in self.env.stats.errors.values()}

    def stop(self) -> None:
        """Stop every agent (each deregisters, as a real agent does when stopped)."""
        self.env.runner.quit()
        self.connections.close()


# ------------------------------------------------------------------------------------ phases
class Window:
    """One measurement window: wall time, the coordinator's CPU and this process's, the load
    average, and what held calls up inside the coordinator (its event loop's lag, the scheduler's
    ticks, full garbage collections), with py-spy on it when asked."""

    def __init__(self, bench: "Bench", name: str):
        self.bench, self.name = bench, name

    def __enter__(self) -> "Window":
        coord = self.bench.coord
        self._pauses = coord.command("pauses")["counts"]
        self.load0, self._me = loadavg(), psutil.Process()
        self.bench.profiler.start(self.name)
        self.t0, self.cpu0, self.mine0 = time.monotonic(), coord.cpu_s(), sum(self._me.cpu_times()[:2])
        return self

    def __exit__(self, *exc) -> None:
        coord = self.bench.coord
        self.t1, self.cpu1, self.mine1 = time.monotonic(), coord.cpu_s(), sum(self._me.cpu_times()[:2])
        self.bench.profiler.finish()
        self.pauses = coord.command("pauses", **self._pauses)

    def numbers(self) -> dict:
        seconds, cpu = self.t1 - self.t0, self.cpu1 - self.cpu0
        return {"window_s": seconds, "coordinator_cpu_s": cpu, "coordinator_core_pct": 100 * cpu / seconds,
                "bench_cpu_s": self.mine1 - self.mine0, "loadavg_start": self.load0, "loadavg_end": loadavg(),
                "loop_lag_ms": spread(self.pauses["loop_lag"]), "tick_ms": spread(self.pauses["tick"]),
                "gc_full_ms": spread(self.pauses["gc"]), **self.bench.monitor.rss_between(self.t0, self.t1)}


@dataclass
class Bench:
    args: argparse.Namespace
    coord: Coordinator
    bridge: Bridge
    monitor: Monitor
    profiler: Profiler

    def idle(self) -> dict:
        """N agents idle for the window: the coordinator's cost, heartbeat latency, agents missing."""
        args, coord = self.args, self.coord
        started, ticks0 = time.monotonic(), coord.command("ticks")
        plan = Plan(device="load-idle", agent_token=coord.agent_token)
        swarm = Swarm.start(self.bridge, coord, plan, args.agents, args.connections)
        registered_s = time.monotonic() - started
        gevent.sleep(args.warmup)
        ticks1 = coord.command("ticks")
        probe = Probe(coord)
        swarm.env.stats.reset_all()
        with Window(self, "idle") as window:
            gevent.sleep(args.seconds)
        probed = probe.finish()
        ticks2 = coord.command("ticks")
        heartbeat, streams, errors = swarm.call_stats("Heartbeat"), swarm.call_stats("Work stream"), swarm.errors()
        waiting = coord.command("counters", device=plan.device)["lease_waiters"]
        states = Counter(a.state for a in coord.status().agents if a.device == plan.device)
        stored = off_hub(agent_states, coord, plan.device)
        swarm.stop()
        return {
            "agents": args.agents, "heartbeat_interval_s": args.heartbeat_interval,
            "connections": len(swarm.connections), "registered_in_s": registered_s, **window.numbers(),
            "heartbeat": heartbeat, "probe_heartbeat": probed, "streams_failed": streams, "streams_waiting": waiting,
            "errors": errors,
            "missing_window": _new(ticks1, ticks2, "missing"), "evicted_window": _new(ticks1, ticks2, "evicted"),
            "missing_phase": _new(ticks0, ticks2, "missing"), "evicted_phase": _new(ticks0, ticks2, "evicted"),
            "states_at_end": dict(states), "store_states_at_end": stored,
            "reregistered": swarm.tally.reregistered, "register_retries": swarm.tally.register_retries}

    def dispatch(self, k: int, batch: int) -> dict:
        """K idle agents, then `--jobs` jobs queued: how fast results are in, at what CPU, exactly once."""
        args, coord = self.args, self.coord
        prefix = f"load-k{k}-{secrets.token_hex(3)}"
        plan = Plan(device=f"load-k{k}", agent_token=coord.agent_token, job_s=args.job_s, slots=args.slots)
        swarm, tally = (swarm := Swarm.start(self.bridge, coord, plan, k, args.connections)), swarm.tally
        deadline = time.monotonic() + 30
        while coord.command("counters", device=plan.device)["lease_waiters"] < k and time.monotonic() < deadline:
            gevent.sleep(0.05)       # every agent's stream waits: dispatch starts from idle agents
        swarm.env.stats.reset_all()
        counters0 = coord.command("counters")
        with Window(self, f"dispatch-k{k}-b{batch}") as window:
            submitted = coord.command("submit", device=plan.device, count=args.jobs, prefix=prefix,
                                      batch=batch)
            deadline = time.monotonic() + args.round_timeout
            while tally.accepted + tally.refused + tally.duplicate < args.jobs and time.monotonic() < deadline:
                gevent.sleep(0.01)
        counters1 = coord.command("counters")
        calls = {name: swarm.call_stats(name) for name in ("Work (jobs)", "Work (result)", "Heartbeat")}
        errors = swarm.errors()
        swarm.stop()
        store = off_hub(check_store, coord, prefix)
        span = (store["last_result_at"] or 0) - (store["first_queued_at"] or 0)
        numbers = window.numbers()
        return {
            "k": k, "slots": args.slots, "jobs": args.jobs, "job_s": args.job_s, "queue_batch": batch,
            **numbers,
            "processed_s": span, "results_per_s": store["results"] / span if span > 0 else 0.0,
            "cpu_ms_per_job": 1000 * numbers["coordinator_cpu_s"] / args.jobs,
            "submit_cpu_s": submitted["cpu_s"], "submit_wall_s": submitted["wall_s"],
            "lease_transactions": _delta(counters0, counters1, "lease_transactions_transactions"),
            "empty_lease_transactions": _delta(counters0, counters1, "lease_transactions_empty"),
            "leased": tally.leased, "accepted": tally.accepted, "duplicate": tally.duplicate, "refused": tally.refused,
            "reregistered": tally.reregistered, "calls": calls, "errors": errors, "store": store}


def round_name(k: int, batch: int, jobs: int) -> str:
    return f"dispatch K={k}" + (", queued ahead" if batch >= jobs else f", queued {batch} per transaction")


def spread(seconds: list[float]) -> dict:
    """Count, median, p99 and max of durations, in ms."""
    if not seconds:
        return {"count": 0}
    ms = sorted(1000 * s for s in seconds)
    return {"count": len(ms), "p50": round(ms[len(ms) // 2], 2),
            "p99": round(ms[min(len(ms) - 1, int(0.99 * len(ms)))], 2), "max": round(ms[-1], 2)}


def _new(before: dict, after: dict, key: str) -> int:
    """How many times agents were marked `key` between two "ticks" answers."""
    return sum(after[key].values()) - sum(before[key].values())


def _delta(before: dict, after: dict, key: str) -> int:
    return after.get(key, 0) - before.get(key, 0)


def agent_states(coord: Coordinator, device: str) -> dict[str, int]:
    with coord.store() as db:
        return dict(db.execute("SELECT state, COUNT(*) FROM agents WHERE device = ? GROUP BY state",
                               (device,)).fetchall())


def check_store(coord: Coordinator, prefix: str) -> dict:
    """Every job of the round done, with exactly one result, recorded by the agent holding its lease."""
    pattern = prefix + "-%"
    with coord.store() as db:
        jobs, done, retried, first = db.execute(
            "SELECT COUNT(*), COALESCE(SUM(state = 'done'), 0), COALESCE(SUM(attempt != 1), 0), MIN(created_at) "
            "FROM jobs WHERE job_id LIKE ?", (pattern,)).fetchone()
        results, distinct, last = db.execute(
            "SELECT COUNT(*), COUNT(DISTINCT job_id), MAX(received_at) FROM results WHERE job_id LIKE ?",
            (pattern,)).fetchone()
        by_holder = db.execute(
            "SELECT COUNT(*) FROM results r JOIN jobs j ON j.job_id = r.job_id WHERE r.job_id LIKE ? "
            "AND r.attempt = j.attempt AND r.agent_id = j.holder AND r.status = 'ok'", (pattern,)).fetchone()[0]
        per_job = dict(db.execute(
            "SELECT n, COUNT(*) FROM (SELECT j.job_id, COUNT(r.job_id) AS n FROM jobs j LEFT JOIN results r "
            "ON r.job_id = j.job_id WHERE j.job_id LIKE ? GROUP BY j.job_id) GROUP BY n", (pattern,)).fetchall())
    return {"jobs": jobs, "done": done, "leased_more_than_once": retried, "results": results,
            "jobs_with_a_result": distinct, "results_by_lease_holder": by_holder,
            "jobs_by_result_count": {str(n): c for n, c in sorted(per_job.items())},
            "first_queued_at": first, "last_result_at": last}


# ------------------------------------------------------------------------------------ main
def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, set[str], list[int]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phases", default="idle,dispatch", help="comma-separated: idle, dispatch")
    parser.add_argument("--agents", type=int, default=1000, help="idle phase: fake agents")
    parser.add_argument("--seconds", type=float, default=300.0, help="idle phase: measurement window")
    parser.add_argument("--warmup", type=float, default=10.0, help="idle phase: seconds after all registered")
    parser.add_argument("--k", default="1,4,16,64,256", help="dispatch: comma-separated agent counts")
    parser.add_argument("--jobs", type=int, default=2000, help="dispatch: jobs per round")
    parser.add_argument("--job-s", type=float, default=0.0, help="dispatch: seconds a fake agent 'runs' a job")
    parser.add_argument("--queue-batch", default="0,1",
                        help="dispatch: comma-separated, one set of rounds each: jobs queued per transaction "
                             "(0: the whole round in one, so it measures dispatch alone; 1: one each while the "
                             "agents run, as a one-device campaign queues its candidates)")
    parser.add_argument("--slots", type=int, default=1,
                        help="dispatch: slots per fake agent (its stream's credit)")
    parser.add_argument("--round-timeout", type=float, default=300.0, help="dispatch: give up a round after this")
    parser.add_argument("--heartbeat-interval", type=float, default=2.0,
                        help="coordinator serve --heartbeat-interval (missing after 3x, evicted after 10x: the "
                             "defaults' ratios)")
    parser.add_argument("--agents-nice", type=int, default=0,
                        help="run the fake agents this much lower in priority than the coordinator and the probe "
                             "(they stand in for other machines; needs root). Locust then times its calls in a "
                             "process that waits longer for a core: the probe's latencies say more")
    parser.add_argument("--connections", type=int, default=0,
                        help="TCP connections the fake agents share (0: one per agent, as real agents have)")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    parser.add_argument("--profile", type=Path, help="py-spy the coordinator during each window into this folder")
    parser.add_argument("--keep", type=Path, help="keep the coordinator's data and log here")
    args = parser.parse_args(argv)
    phases = {p.strip() for p in args.phases.split(",") if p.strip()}
    if phases - {"idle", "dispatch"} or not phases:
        parser.error(f"--phases {args.phases!r}: choose from idle, dispatch")
    ks = [int(k) for k in args.k.split(",") if k.strip()] if "dispatch" in phases else []
    try:
        args.queue_batches = [int(b) or args.jobs for b in args.queue_batch.split(",") if b.strip()]
    except ValueError:
        args.queue_batches = []
    if any(b < 0 for b in args.queue_batches) or not args.queue_batches:
        parser.error(f"--queue-batch {args.queue_batch!r}: jobs per transaction, >= 0 each (0: the whole round)")
    if any(k < 1 for k in ks) or min(args.agents, args.jobs, args.slots) < 1:
        parser.error("--agents, --jobs, --slots and every K must be >= 1")
    args.connections = args.connections or 1 << 30
    return args, phases, ks


def run(args: argparse.Namespace, phases: set[str], ks: list[int], work: Path) -> dict:
    """Every phase against one coordinator; the report (without verdicts)."""
    report: dict = {"machine": {"cores": os.cpu_count(), "cpu_flags": cpu_flags(), "loadavg_start": loadavg(),
                                "locust": __import__("locust").__version__, "grpcio": grpc.__version__,
                                "agents_nice": lower_agents_priority(args.agents_nice)},
                    "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}
    with ExitStack() as stack:
        coord = Coordinator(work, args)
        stack.callback(coord.stop)
        bridge = Bridge()
        stack.callback(bridge.close)
        monitor = Monitor(coord)
        stack.callback(monitor.stop)
        bench = Bench(args, coord, bridge, monitor, Profiler(args.profile, coord))
        boot = monitor.sample()[0]
        spans: dict[str, tuple[float, float]] = {}
        if "idle" in phases:
            begin = time.monotonic()
            report["idle"] = bench.idle()
            spans["idle"] = (begin, time.monotonic())
        for batch in args.queue_batches:
            for k in ks:
                begin = time.monotonic()
                report.setdefault("dispatch", []).append(bench.dispatch(k, batch))
                spans[round_name(k, batch, args.jobs)] = (begin, time.monotonic())
        end = monitor.sample()[0]
        report["memory"] = {**monitor.rss_between(boot, end),
                            "phases": {name: monitor.rss_between(*span) for name, span in spans.items()},
                            "samples": [(round(t - boot, 1), round(cpu, 2), rss) for t, cpu, rss in monitor.samples]}
        report["counters"] = coord.command("counters")
        if bench.profiler.threads:
            report["coordinator_thread_cpu_s"] = bench.profiler.threads
    report["machine"]["loadavg_end"] = loadavg()
    return report


def main(argv: list[str] | None = None) -> int:
    args, phases, ks = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="qfarm-load-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        report = run(args, phases, ks, work)
    report["targets"] = [list(row) for row in targets(report)]
    report["problems"] = correctness(report)
    print_report(report)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1))
    return 1 if report["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
