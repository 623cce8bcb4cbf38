"""Pipeline benchmark: numbers, not a timed test. Three measurements, each printing CPU seconds
next to wall time and the machine's load (this machine is shared: repeat and read the spread).

  sweep   A real sweep (default 104 candidates) of a small model (103 convs) on `coordinator serve`
          with 4 `agent register` processes on loopback, once per mode and repeat, interleaved: "before" =
          builds in the coordinator's process and report.json rewritten after every result
          (`--build-workers 0 --report-interval-s 0`), "after" = the defaults (cores - 1 build
          workers, journaled results, throttled report), "after-2w" = two build workers. Each mode runs the sweep cold (every candidate
          built), then again with one more latency run (new jobs for the same, already built
          candidates): the cold run's build rate (candidates built per second) against the warm
          run's result rate (what agents and dispatch sustain when no build is waited for), and the
          share of the cold run's search the agents sat idle for want of a build (GetStatus sampled
          every 0.1 s: nothing queued, an agent free, builds still to come). Build rate >= that
          result rate, and ~0% idle, is dispatch-bound; the opposite is build-bound.
  report  Coordinator CPU per result spent on the tune's state, at a realistic report size (104
          candidates, a 61-node ranking): the old whole-report rewrite per result against the
          journal line + throttled rewrite, interleaved, in this process.
  memory  The coordinator process's RSS over consecutive small campaigns (default 50, each a new
          seed: new data split, new candidates), flat within 10% is the target.

    python bench/pipeline.py sweep --repeats 2
    python bench/pipeline.py report
    python bench/pipeline.py memory --campaigns 50
"""
from __future__ import annotations

import argparse
import logging
import os
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.farm import builder_cpu, cpu_flags, cpu_seconds, start, stop, wait_port  # noqa: E402
from coordinator.farm.client import CampaignClient  # noqa: E402
from coordinator.farm.spec import spec_from_local  # noqa: E402

log = logging.getLogger("bench.pipeline")
IMAGES = ROOT / "tests" / "fixtures" / "imagenet-100"
MODES = {"before": ("--build-workers", "0", "--report-interval-s", "0"),   # builds in-process, report per result
         "after": (),                                                      # defaults: cores - 1 build workers
         "after-2w": ("--build-workers", "2")}                             # one build worker per core


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.1f}/{five:.1f} on {os.cpu_count()} cores"


class Farm:
    """`coordinator serve` (with `flags`) and `agents` x `agent register` as processes on loopback."""

    def __init__(self, work: Path, flags: tuple[str, ...] = (), agents: int = 4, device: str = "cpu"):
        self.work, self.flags, self.count, self.device = work, flags, agents, device
        self.stack = ExitStack()

    def __enter__(self) -> "Farm":
        self.work.mkdir(parents=True, exist_ok=True)
        self.data_dir, port_file = self.work / "coordinator", self.work / "port"
        proc = start([sys.executable, "-m", "coordinator.cli", "serve", "--port", "0", "--data-dir",
                      str(self.data_dir), "--port-file", str(port_file), *self.flags], self.work / "coordinator.log")
        self.stack.callback(stop, proc)
        self.address = f"127.0.0.1:{wait_port(port_file, proc)}"
        self.coordinator = psutil.Process(proc.pid)
        self.client = self.stack.enter_context(CampaignClient(self.address))
        for i in range(self.count):
            agent = start([sys.executable, "-m", "agent.cli", "register", "--device", self.device, "--coordinator",
                           self.address, "--threads", "1", "--work-dir", str(self.work / f"agent-{i}")],
                          self.work / f"agent-{i}.log")
            self.stack.callback(stop, agent)
        deadline = time.monotonic() + 120
        while sum(a.state in ("idle", "busy") for a in self.client.status().agents) < self.count:
            if time.monotonic() > deadline:
                raise SystemExit(f"{self.count} agents did not register; see {self.work}")
            time.sleep(0.1)
        return self

    def __exit__(self, *exc) -> None:
        self.stack.close()

    def builder_cpu(self) -> float:
        return builder_cpu(self.coordinator)

    def db(self) -> sqlite3.Connection:
        return sqlite3.connect(self.data_dir / "qfarm.sqlite3")


# ------------------------------------------------------------------------------------------ sweep
def sweep_spec(args, model: Path, work: Path, name: str, latency_runs: int):
    raw = {"name": name, "devices": ["cpu"], "models": [{"path": str(model)}],
           "data": {"images": str(IMAGES), "calibration": 16, "eval": args.eval, "latency_runs": latency_runs},
           "preprocess": {"input_size": 32}, "quantization": {"calibration_images": 16},
           "strategy": {"name": "sweep", "max_candidates": args.candidates, "ranking_images": 4}}
    return spec_from_local(raw, "bench", work)


def sample_queue(client: CampaignClient, campaign: str, stop_event: threading.Event, samples: list) -> None:
    while not stop_event.wait(0.1):
        try:
            [status] = client.status(campaign).campaigns
        except Exception:  # noqa: BLE001 - a missed sample is a missed sample
            continue
        for d in status.devices:
            samples.append((time.time(), d.total, d.done, d.queued, d.leased, d.agents))


def campaign_run(farm: Farm, spec) -> dict:
    """Submit, sample the queue, wait; the coordinator's CPU and its build workers' CPU."""
    cpu0, build0, t0, load0 = cpu_seconds(farm.coordinator), farm.builder_cpu(), time.monotonic(), load()
    campaign = farm.client.submit(spec)
    samples: list = []
    stop_event = threading.Event()
    sampler = threading.Thread(target=sample_queue, args=(farm.client, campaign, stop_event, samples), daemon=True)
    sampler.start()
    final = farm.client.wait(campaign, poll_s=0.25)
    stop_event.set()
    sampler.join()
    wall = time.monotonic() - t0
    if final.state != "done":
        raise SystemExit(f"{spec.name}: campaign {final.state}: {final.message}")
    line = timeline(farm, campaign)
    built = line["built"]
    eval_span = max(line["last_result"] - line["first_job"], 1e-9)
    # idle for want of a build: nothing queued, an agent free, while candidates were still to be built
    search = [s for s in samples if built and built[0] <= s[0] <= built[-1]]
    starved = [s for s in search if s[3] == 0 and s[4] < s[5]]
    return {"wall": wall, "coord_cpu": cpu_seconds(farm.coordinator) - cpu0, "build_cpu": farm.builder_cpu() - build0,
            "results": line["results"], "built": len(built), "load": load0,
            "build_rate": (len(built) - 1) / max(built[-1] - built[0], 1e-9) if len(built) > 1 else float("nan"),
            "result_rate": line["results"] / eval_span, "starved": len(starved) / max(1, len(search))}


def timeline(farm: Farm, campaign: str) -> dict:
    with farm.db() as db:
        built = [r[0] for r in db.execute(
            "SELECT c.created_at FROM candidates c WHERE c.candidate_id IN (SELECT j.candidate_id FROM jobs j JOIN "
            "campaign_jobs cj ON cj.job_id = j.job_id WHERE cj.campaign_id = ? AND j.kind = 'candidate') "
            "ORDER BY c.created_at", (campaign,))]
        first_job, last_result, results = db.execute(
            "SELECT MIN(j.created_at), MAX(r.received_at), COUNT(r.job_id) FROM jobs j JOIN campaign_jobs cj ON "
            "cj.job_id = j.job_id JOIN results r ON r.job_id = j.job_id WHERE cj.campaign_id = ? AND "
            "j.kind = 'candidate'", (campaign,)).fetchone()
    return {"built": built, "first_job": first_job, "last_result": last_result, "results": results}


def run_sweep(args, mode: str, work: Path, model: Path) -> dict:
    with Farm(work, MODES[mode], agents=args.agents) as farm:
        cold = campaign_run(farm, sweep_spec(args, model, work, f"sweep-{mode}", args.latency_runs))
        warm = campaign_run(farm, sweep_spec(args, model, work, f"sweep-{mode}-built", args.latency_runs + 1))
    return {"mode": mode, **cold, "dispatch_rate": warm["result_rate"], "warm_cpu": warm["coord_cpu"],
            "warm_results": warm["results"]}


def cmd_sweep(args) -> None:
    from tests.models import make_classifier

    runs = []
    with tempfile.TemporaryDirectory(prefix="qfarm-bench-pipeline-") as tmp:
        base = Path(args.keep or tmp)
        model = make_classifier(base / "sweep.onnx", size=32, channels=(16,) * 103, classes=100)
        for repeat in range(args.repeats):
            order = list(args.modes) if repeat % 2 == 0 else list(reversed(args.modes))
            for mode in order:
                log.info("sweep %d/%d: %s", repeat + 1, args.repeats, mode)
                runs.append(run_sweep(args, mode, base / f"{mode}-{repeat}", model))
    print(f"\nsweep: {args.candidates} candidates of a 103-conv model (1.9 MB), {args.agents} agents (1 thread each), "
          f"{args.eval} images, {args.latency_runs} latency runs; CPU flags: {cpu_flags()}")
    print("  (results/s built: the same sweep again, every candidate already built: what agents and dispatch "
          "sustain; idle for a build: share of the cold sweep's build phase with nothing queued and an agent free)")
    print("  mode      wall s  coord CPU s  CPU/result ms  build-worker CPU s  built/s  results/s  results/s built"
          "  idle for a build  load at start")
    for r in runs:
        print(f"  {r['mode']:<8} {r['wall']:7.1f}  {r['coord_cpu']:11.2f}  {1000 * r['coord_cpu'] / r['results']:13.1f}  "
              f"{r['build_cpu']:18.2f}  {r['build_rate']:7.2f}  {r['result_rate']:9.2f}  {r['dispatch_rate']:15.2f}"
              f"  {100 * r['starved']:15.0f}%  {r['load']}")
    for mode in args.modes:
        mine = [r for r in runs if r["mode"] == mode]
        if len(mine) > 1:
            walls = [r["wall"] for r in mine]
            print(f"  {mode}: wall {min(walls):.1f}-{max(walls):.1f} s over {len(mine)} runs")
    before = [r for r in runs if r["mode"] == "before"]
    after = [r for r in runs if r["mode"] == "after"]
    if before and after:
        ratio = statistics.median(r["coord_cpu"] / r["results"] for r in before) / \
            statistics.median(r["coord_cpu"] / r["results"] for r in after)
        print(f"  coordinator-process CPU per result, before/after (medians): {ratio:.1f}x; "
              f"wall before/after: {statistics.median(r['wall'] for r in before) / statistics.median(r['wall'] for r in after):.2f}x")


# ------------------------------------------------------------------------------------------ report
def cmd_report(args) -> None:
    import shutil

    import numpy as np

    from coordinator.evaluators import EvalInputs
    from coordinator.prepare import ModelInput, PreparedModel
    from coordinator.quantize import BuiltCandidate, CandidateSpec
    from coordinator.tuner.config import TuneConfig
    from coordinator.tuner.state import ReportPolicy, ReportState
    from coordinator.tuner.workspace import Workspace
    from shared.results import DeviceResult, ResultStatus
    from shared.runners.base import RunnerInfo

    nodes = tuple(f"block{i}/conv" for i in range(args.candidates + 8))
    prepared = PreparedModel(Path("m.onnx"), Path("p.onnx"), "ab" * 32, 18_600_000,
                             (ModelInput("input", (None, 3, 224, 224), "float32"),), ("logits",), nodes,
                             ("Conv",) * len(nodes))
    ws = Workspace(prepared, None, EvalInputs({"input": np.zeros((1, 3, 8, 8), np.float32)}, None, 20), "c",
                   {"model_sha256": "ab" * 32}, ())
    ranking = [{"node": n, "op_type": "Conv", "score": 0.5, "rank": i + 1, "tensor": n + ":0",
                "seqto": {"score": 0.5, "qdq_sqnr_db": 30.0, "xmodel_sqnr_db": 20.0, "qdq_norm": 0.4, "xmodel_norm": 0.3},
                "quantune": {"score": 0.2, "sqnr_db": 25.0, "sqnr_delta_db": 1.0, "mse": 0.01, "mse_outlier": False,
                             "weight_sqnr_db": 40.0}} for i, n in enumerate(nodes[:61])]
    runtime = RunnerInfo("onnxruntime", "1.32.0", ("CPUExecutionProvider",), "graph_optimization=all threads=1")

    def one(policy: ReportPolicy, out: Path) -> tuple[float, float, int]:
        out.mkdir(parents=True)
        state = ReportState.open(TuneConfig(model=Path("m.onnx"), images=Path("i"), out=out), ws, ("cpu",), policy)
        state.set_section("ranking", ranking)
        cands = [BuiltCandidate(CandidateSpec("ab" * 32, ws_settings, nodes[:k]), out / f"{k}.onnx", "cd" * 32,
                                5_000_000 + k) for k in range(args.candidates)]
        for cand in cands:
            state.add_built(cand, out)
        c0, t0 = time.process_time(), time.perf_counter()
        for k, cand in enumerate(cands):
            state.record(cand.id, "cpu", DeviceResult(ResultStatus.OK, top1_agreement=0.9 + k / 1e4,
                                                      top5_agreement=1.0, top1_accuracy=0.8, latency_ms_p50=10.0 - k / 100,
                                                      latency_ms_p90=11.0, num_images=200, wall_seconds=3.2,
                                                      runtime=runtime, size_bytes=cand.size_bytes))
        cpu, wall = time.process_time() - c0, time.perf_counter() - t0
        state.close()
        return cpu / len(cands), wall / len(cands), (out / "report.json").stat().st_size

    from shared.settings import QuantSettings

    ws_settings = QuantSettings()
    rows = {"rewrite per result (before)": [], "journal + throttle (after)": []}
    with tempfile.TemporaryDirectory(prefix="qfarm-bench-report-") as tmp:
        for repeat in range(args.repeats):
            for name, policy in (("rewrite per result (before)", ReportPolicy(every_s=0)),
                                 ("journal + throttle (after)", ReportPolicy())):
                out = Path(tmp) / f"{repeat}-{name.split()[0]}"
                rows[name].append(one(policy, out))
                shutil.rmtree(out)
    size = rows["rewrite per result (before)"][0][2]
    print(f"\nreport state: {args.candidates} candidates, report.json {size / 1e3:.0f} kB at the end, "
          f"{args.repeats} interleaved repeats, {load()}; CPU flags: {cpu_flags()}")
    print("  mode                          CPU ms/result (median, range)    wall ms/result (median, range)")
    medians = {}
    for name, values in rows.items():
        cpu = [1000 * v[0] for v in values]
        wall = [1000 * v[1] for v in values]
        medians[name] = (statistics.median(cpu), statistics.median(wall))
        print(f"  {name:<29} {statistics.median(cpu):7.3f} ({min(cpu):.3f}-{max(cpu):.3f})            "
              f"{statistics.median(wall):7.3f} ({min(wall):.3f}-{max(wall):.3f})")
    b, a = medians["rewrite per result (before)"], medians["journal + throttle (after)"]
    print(f"  before/after: CPU {b[0] / a[0]:.0f}x, wall {b[1] / a[1]:.0f}x")


# ------------------------------------------------------------------------------------------ memory
def cmd_memory(args) -> None:
    from tests.models import make_classifier

    rss: list[tuple[int, float, float, float]] = []
    with tempfile.TemporaryDirectory(prefix="qfarm-bench-memory-") as tmp:
        work = Path(args.keep or tmp)
        model = make_classifier(work / "tiny.onnx")
        with Farm(work / "farm", agents=1) as farm:
            t0, cpu0 = time.monotonic(), cpu_seconds(farm.coordinator)
            for i in range(args.campaigns):
                raw = {"name": f"small-{i}", "devices": ["cpu"], "models": [{"path": str(model)}],
                       "data": {"images": str(IMAGES), "calibration": 8, "eval": 16, "latency_runs": 2, "seed": i},
                       "preprocess": {"input_size": 32}, "quantization": {"calibration_images": 8},
                       "strategy": {"max_candidates": 3, "ranking_images": 4}}
                campaign = farm.client.submit(spec_from_local(raw, "bench", work))
                final = farm.client.wait(campaign, poll_s=0.2)
                if final.state != "done":
                    raise SystemExit(f"campaign {i}: {final.state}: {final.message}")
                workers = sum(c.memory_info().rss for c in farm.coordinator.children(recursive=True))
                mine = farm.coordinator.memory_info()
                rss.append((i + 1, mine.rss / 2**20, (mine.rss - mine.shared) / 2**20, workers / 2**20))
                if (i + 1) % 10 == 0:
                    log.info("%d campaigns: coordinator RSS %.1f MB", i + 1, rss[-1][1])
            wall, cpu = time.monotonic() - t0, cpu_seconds(farm.coordinator) - cpu0
    print(f"\nmemory: {args.campaigns} consecutive small campaigns (3 candidates each, a new seed each), 1 agent; "
          f"{wall:.0f} s wall, coordinator CPU {cpu:.1f} s; {load()}")
    print("  after campaign   coordinator RSS MB   (not file-backed)   build workers RSS MB")
    for i, coord, anon, workers in rss:
        if i in (1, 2, 5) or i % 10 == 0:
            print(f"  {i:14d}   {coord:18.1f}   {anon:17.1f}   {workers:20.1f}")
    settled = [r[1] for r in rss[min(5, len(rss) - 1):]]
    print(f"  from campaign {min(6, len(rss))} on: {min(settled):.1f}-{max(settled):.1f} MB "
          f"(max/min {max(settled) / min(settled):.3f}; target <= 1.10); "
          f"last 10 vs campaigns 6-15: {statistics.mean(r[1] for r in rss[-10:]) / statistics.mean(settled[:10]):.3f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("sweep")
    p.add_argument("--candidates", type=int, default=104)
    p.add_argument("--agents", type=int, default=4)
    p.add_argument("--eval", type=int, default=16)
    p.add_argument("--latency-runs", type=int, default=10)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--modes", nargs="+", choices=sorted(MODES), default=["before", "after", "after-2w"])
    p.add_argument("--keep", type=Path)
    p.set_defaults(func=cmd_sweep)
    p = sub.add_parser("report")
    p.add_argument("--candidates", type=int, default=104)
    p.add_argument("--repeats", type=int, default=5)
    p.set_defaults(func=cmd_report)
    p = sub.add_parser("memory")
    p.add_argument("--campaigns", type=int, default=50)
    p.add_argument("--keep", type=Path)
    p.set_defaults(func=cmd_memory)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
