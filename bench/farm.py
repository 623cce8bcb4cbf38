"""Farm benchmark: numbers, not a timed test. Prints, measured in one run on this machine:

  * campaign wall time with 1 agent vs 2 agents of one device class (same candidates, 1 thread
    per agent) and the ratio, for the whole campaign, with its phases from the coordinator's
    database side by side: preparing model and data, the FP32 reference job, ranking and the
    first build, the build span (first to last candidate queued) and the evaluation phase;
    `--repeats N` alternates the 1- and 2-agent campaigns N times (a shared machine: read the spread);
  * coordinator CPU seconds per evaluated candidate (cold run: builds happen in the build
    workers, whose CPU is printed separately);
  * bytes sent per candidate on an identical second campaign with everything cached, against
    the model's size.

Everything runs as real processes on loopback: `coordinator serve` and `agent register`. Runs:
a cold warm-up campaign builds every candidate (device class `warm`, 1 agent); then the 1-agent
(`one`) and 2-agent (`two`) campaigns measure the same, already built candidates; then `two`
is submitted again to measure the cached re-send.

    python bench/farm.py --smoke                       # tiny synthetic model, ~1 minute
    python bench/farm.py --model models/effnet_lite0.onnx --mean 0.498 0.498 0.498 \
        --std 0.502 0.502 0.502 --candidates 8 --eval 64 --repeats 2
"""
from __future__ import annotations

import argparse
import logging
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from coordinator.farm.client import CampaignClient  # noqa: E402
from coordinator.farm.spec import spec_from_local  # noqa: E402

log = logging.getLogger("bench.farm")

FULL = {"input_size": 224, "candidates": 8, "eval": 64, "calibration": 16, "latency_runs": 20}
SMOKE = {"input_size": 64, "candidates": 6, "eval": 48, "calibration": 8, "latency_runs": 300}


def start(cmd: list[str], log_path: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(cmd, stdout=open(log_path, "ab"), stderr=subprocess.STDOUT, env=env, cwd=ROOT)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return times.user + times.system


def builder_cpu(coord: psutil.Process) -> float:
    """CPU seconds of the coordinator's child processes (its build workers) so far."""
    total = 0.0
    for child in coord.children(recursive=True):
        try:
            total += cpu_seconds(child)
        except psutil.NoSuchProcess:
            continue
    return total


def cpu_flags() -> str:
    flags: set[str] = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags |= {f for f in line.split() if f in ("avx512_vnni", "avx_vnni", "avx2", "avx512f")}
    return " ".join(sorted(flags)) or "none of avx2/avx512f/avx512_vnni/avx_vnni"


def wait_port(port_file: Path, proc: subprocess.Popen, timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_file.is_file() and port_file.read_text().strip():
            return int(port_file.read_text())
        if proc.poll() is not None:
            raise SystemExit(f"coordinator exited with {proc.returncode}; see its log")
        time.sleep(0.1)
    raise SystemExit("coordinator did not start")


def phases(data_dir: Path, device: str, campaign_id: str) -> dict[str, float]:
    """A campaign's phases from the coordinator's DB (seconds): prepare (submitted -> FP32 reference
    queued: the model prepared and the images decoded, in a build worker), reference (its job queued
    -> result), rank+build (-> first candidate queued: ranking, calibration, the first build),
    builds (first -> last candidate queued) and evaluation (first candidate queued -> last result)."""
    with sqlite3.connect(data_dir / "qfarm.sqlite3") as db:
        created, updated = db.execute("SELECT created_at, updated_at FROM campaigns WHERE campaign_id = ?",
                                      (campaign_id,)).fetchone()
        ref_queued, ref_done = db.execute(
            "SELECT j.created_at, r.received_at FROM jobs j JOIN results r ON r.job_id = j.job_id "
            "WHERE j.device = ? AND j.kind = 'reference'", (device,)).fetchone()
        first, last_queued, last_result = db.execute(
            "SELECT MIN(j.created_at), MAX(j.created_at), MAX(r.received_at) FROM jobs j JOIN results r "
            "ON r.job_id = j.job_id WHERE j.device = ? AND j.kind = 'candidate'", (device,)).fetchone()
    return {"prepare": ref_queued - created, "reference": ref_done - ref_queued, "rank+build": first - ref_done,
            "builds": last_queued - first, "evaluation": last_result - first, "server": updated - created}


def spec_for(args, device: str, work: Path):
    raw = {"name": f"bench-{device}", "devices": [device], "models": [{"path": str(args.model)}],
           "data": {"images": str(args.images), "calibration": args.calibration, "eval": args.eval,
                    "latency_runs": args.latency_runs},
           "preprocess": {"input_size": args.input_size, **({"mean": list(args.mean)} if args.mean else {}),
                          **({"std": list(args.std)} if args.std else {})},
           "quantization": {"calibration_images": args.calibration},
           "strategy": {"max_candidates": args.candidates}}
    return spec_from_local(raw, "bench", work)


def run_campaign(client: CampaignClient, spec, coord: psutil.Process, stats_before) -> dict:
    cpu0 = cpu_seconds(coord)
    t0 = time.monotonic()
    campaign_id = client.submit(spec)
    final = client.wait(campaign_id, poll_s=0.25)
    wall = time.monotonic() - t0
    if final.state != "done":
        raise SystemExit(f"campaign {campaign_id} {final.state}: {final.message}")
    stats = client.status().stats
    evaluated = sum(d.total for d in final.devices) - len(final.devices)   # minus the FP32 reference jobs
    return {"id": campaign_id, "wall_s": wall, "cpu_s": cpu_seconds(coord) - cpu0, "evaluated": evaluated,
            "results": stats.results_accepted - stats_before.results_accepted,
            "bytes": (stats.artifact_bytes_sent - stats_before.artifact_bytes_sent)
            + (stats.job_bytes_sent - stats_before.job_bytes_sent)
            + (stats.artifact_bytes_received - stats_before.artifact_bytes_received), "stats": stats}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny synthetic model and few images")
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "effnet_lite0.onnx")
    parser.add_argument("--images", type=Path, default=ROOT / "tests" / "fixtures" / "imagenet-100")
    parser.add_argument("--input-size", type=int)
    parser.add_argument("--candidates", type=int)
    parser.add_argument("--eval", type=int)
    parser.add_argument("--calibration", type=int)
    parser.add_argument("--latency-runs", type=int)
    parser.add_argument("--mean", type=float, nargs=3, help="preprocessing mean (EfficientNet-Lite: 0.498 x3)")
    parser.add_argument("--std", type=float, nargs=3, help="preprocessing std (EfficientNet-Lite: 0.502 x3)")
    parser.add_argument("--repeats", type=int, default=1, help="1-agent and 2-agent campaigns, alternated")
    parser.add_argument("--keep", type=Path, help="keep the data and logs here instead of a temp dir")
    args = parser.parse_args(argv)
    args.model, args.images = args.model.resolve(), args.images.resolve()   # the spec is read from a temp dir
    for key, value in (SMOKE if args.smoke else FULL).items():   # flags given explicitly win
        if getattr(args, key) is None:
            setattr(args, key, value)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    with ExitStack() as stack:
        work = args.keep or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="qfarm-bench-")))
        work.mkdir(parents=True, exist_ok=True)
        if args.smoke:
            from tests.models import make_classifier

            args.model = make_classifier(work / "bench.onnx", size=64, channels=(16, 32, 32, 64))
        data_dir, port_file = work / "coordinator", work / "port"
        coord_proc = start([sys.executable, "-m", "coordinator.cli", "serve", "--port", "0", "--data-dir",
                            str(data_dir), "--port-file", str(port_file)], work / "coordinator.log")
        stack.callback(stop, coord_proc)
        address = f"127.0.0.1:{wait_port(port_file, coord_proc)}"
        coord = psutil.Process(coord_proc.pid)
        client = stack.enter_context(CampaignClient(address))

        def agents(device: str, count: int) -> list[subprocess.Popen]:
            procs = [start([sys.executable, "-m", "agent.cli", "register", "--device", device, "--coordinator",
                            address, "--threads", "1", "--work-dir", str(work / f"agent-{device}-{i}")],
                           work / f"agent-{device}-{i}.log") for i in range(count)]
            for p in procs:
                stack.callback(stop, p)
            deadline = time.monotonic() + 60
            while sum(a.device == device and a.state in ("idle", "busy") for a in client.status().agents) < count:
                if time.monotonic() > deadline:
                    raise SystemExit(f"{count} agent(s) of {device} did not register")
                time.sleep(0.1)
            return procs

        last_two = f"two{args.repeats - 1}"     # its agents stay for the cached re-run

        def campaign(device: str, count: int) -> dict:
            procs = agents(device, count)
            log.info("campaign on %s with %d agent(s)", device, count)
            build0 = builder_cpu(coord)
            run = run_campaign(client, spec_for(args, device, work), coord, client.status().stats)
            run["build_cpu_s"] = builder_cpu(coord) - build0
            run["phases"] = phases(data_dir, device, run["id"])
            run["load"] = os.getloadavg()[0]
            if device != last_two:
                for p in procs:
                    stop(p)
            return run

        warm = campaign("warm", 1)
        runs: list[tuple[int, dict]] = []
        for r in range(args.repeats):
            for count in ((1, 2) if r % 2 == 0 else (2, 1)):
                runs.append((count, campaign(f"{'one' if count == 1 else 'two'}{r}", count)))
        sent_before = client.bytes_sent
        cached = run_campaign(client, spec_for(args, last_two, work), coord, client.status().stats)
        cached["client_bytes"] = client.bytes_sent - sent_before
        model_bytes = Path(args.model).stat().st_size      # the smoke model lives in the temp dir
    ones = [run for count, run in runs if count == 1]
    twos = [run for count, run in runs if count == 2]
    print(f"\nfarm benchmark: {ones[0]['evaluated']} candidates, {args.eval} images, {args.latency_runs} latency "
          f"runs, model {model_bytes / 1e6:.2f} MB ({args.model.name}), {os.cpu_count()} CPU cores, CPU flags: "
          f"{cpu_flags()}")
    keys = ("prepare", "reference", "rank+build", "builds", "evaluation")
    print("  agents  whole s  " + "  ".join(f"{k:>10}" for k in keys) + "  load")
    for count, run in runs:
        print(f"  {count:6d}  {run['wall_s']:7.2f}  " + "  ".join(f"{run['phases'][k]:10.2f}" for k in keys)
              + f"  {run['load']:.1f}")
    for (one, two) in zip(ones, twos):
        print(f"  2 vs 1 agents: whole {one['wall_s'] / two['wall_s']:.2f}x, evaluation "
              f"{one['phases']['evaluation'] / two['phases']['evaluation']:.2f}x, whole minus prepare and reference "
              f"{(one['wall_s'] - one['phases']['prepare'] - one['phases']['reference']) / (two['wall_s'] - two['phases']['prepare'] - two['phases']['reference']):.2f}x")
    print(f"  cold warm-up campaign (every candidate built): whole {warm['wall_s']:.2f} s, prepare "
          f"{warm['phases']['prepare']:.2f} s, reference {warm['phases']['reference']:.2f} s, rank+first build "
          f"{warm['phases']['rank+build']:.2f} s, builds {warm['phases']['builds']:.2f} s, evaluation "
          f"{warm['phases']['evaluation']:.2f} s; build workers {warm['build_cpu_s']:.2f} s CPU")
    one = ones[0]
    print(f"  coordinator CPU per evaluated candidate: {warm['cpu_s'] / warm['evaluated']:.3f} s cold "
          f"(+ {warm['build_cpu_s'] / warm['evaluated']:.3f} s in build workers), "
          f"{one['cpu_s'] / one['evaluated']:.3f} s with candidates built")
    total = cached["bytes"] + cached["client_bytes"]
    per = total / max(1, one["evaluated"])
    print(f"  cached re-run: {cached['results']} new results; bytes sent: {cached['bytes']} coordinator<->agents "
          f"+ {cached['client_bytes']} client->coordinator (spec, artifact check, status polls) = "
          f"{per:.0f} bytes per candidate = {100 * per / model_bytes:.3f}% of the model's bytes")
    two = twos[-1]
    print(f"  (2-agent run: {two['bytes'] / max(1, two['evaluated']):.0f} bytes per candidate "
          f"coordinator<->agents)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
