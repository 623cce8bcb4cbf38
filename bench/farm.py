"""Farm benchmark: numbers, not a timed test. Prints, measured in one run on this machine:

  * campaign wall time with 1 agent vs 2 agents of one device class (same candidates, 1 thread
    per agent) and the ratio, for the whole campaign and for its evaluation phase;
  * coordinator CPU seconds per evaluated candidate (cold run: includes building candidates);
  * bytes sent per candidate on an identical second campaign with everything cached, against
    the model's size.

Everything runs as real processes on loopback: `coordinator serve` and `agent register`. Runs:
a cold warm-up campaign builds every candidate (device class `warm`, 1 agent); then the 1-agent
(`one`) and 2-agent (`two`) campaigns measure the same, already built candidates; then `two`
is submitted again to measure the cached re-send.

    python bench/farm.py --smoke                       # tiny synthetic model, ~1 minute
    python bench/farm.py --model models/effnet_lite0.onnx --images DIR --candidates 8 --eval 100
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


def wait_port(port_file: Path, proc: subprocess.Popen, timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_file.is_file() and port_file.read_text().strip():
            return int(port_file.read_text())
        if proc.poll() is not None:
            raise SystemExit(f"coordinator exited with {proc.returncode}; see its log")
        time.sleep(0.1)
    raise SystemExit("coordinator did not start")


def evaluation_phase_s(data_dir: Path, device: str) -> float:
    """First candidate job queued -> last candidate result received, from the coordinator's DB."""
    with sqlite3.connect(data_dir / "qfarm.sqlite3") as db:
        start, end = db.execute(
            "SELECT MIN(j.created_at), MAX(r.received_at) FROM jobs j JOIN results r ON r.job_id = j.job_id "
            "WHERE j.device = ? AND j.kind = 'candidate'", (device,)).fetchone()
    return float(end - start)


def spec_for(args, device: str, work: Path):
    raw = {"name": f"bench-{device}", "devices": [device], "models": [{"path": str(args.model)}],
           "data": {"images": str(args.images), "calibration": args.calibration, "eval": args.eval,
                    "latency_runs": args.latency_runs},
           "preprocess": {"input_size": args.input_size},
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

        runs = {}
        for device, count in (("warm", 1), ("one", 1), ("two", 2)):
            procs = agents(device, count)
            log.info("campaign on %s with %d agent(s)", device, count)
            runs[device] = run_campaign(client, spec_for(args, device, work), coord, client.status().stats)
            runs[device]["eval_s"] = evaluation_phase_s(data_dir, device)
            if device != "two":
                for p in procs:
                    stop(p)
        sent_before = client.bytes_sent
        cached = run_campaign(client, spec_for(args, "two", work), coord, client.status().stats)
        cached["client_bytes"] = client.bytes_sent - sent_before

    model_bytes = Path(args.model).stat().st_size
    one, two, warm = runs["one"], runs["two"], runs["warm"]
    print(f"\nfarm benchmark: {one['evaluated']} candidates, {args.eval} images, {args.latency_runs} latency runs, "
          f"model {model_bytes / 1e6:.2f} MB ({args.model.name}), {os.cpu_count()} CPU cores")
    print(f"  campaign wall time, 1 agent : {one['wall_s']:7.2f} s   (evaluation phase {one['eval_s']:6.2f} s)")
    print(f"  campaign wall time, 2 agents: {two['wall_s']:7.2f} s   (evaluation phase {two['eval_s']:6.2f} s)")
    print(f"  speed-up 2 vs 1 agents      : {one['wall_s'] / two['wall_s']:7.2f}x  "
          f"(evaluation phase {one['eval_s'] / two['eval_s']:.2f}x)")
    print(f"  coordinator CPU per evaluated candidate: {warm['cpu_s'] / warm['evaluated']:.3f} s cold "
          f"(building included), {one['cpu_s'] / one['evaluated']:.3f} s with candidates built")
    total = cached["bytes"] + cached["client_bytes"]
    per = total / max(1, one["evaluated"])
    print(f"  cached re-run: {cached['results']} new results; bytes sent: {cached['bytes']} coordinator<->agents "
          f"+ {cached['client_bytes']} client->coordinator (spec, artifact check, status polls) = "
          f"{per:.0f} bytes per candidate = {100 * per / model_bytes:.3f}% of the model's bytes")
    print(f"  (first 2-agent run: {two['bytes'] / max(1, two['evaluated']):.0f} bytes per candidate "
          f"coordinator<->agents)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
