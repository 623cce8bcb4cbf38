"""One more agent, timed from a process of its own, for bench/load.py's idle phase: plain
synchronous gRPC (no Locust, no gevent, no other agent in the process) heartbeating every
`--every` seconds and timing each call with a monotonic clock. Locust times the fake agents in the
bench process, which also runs a thousand greenlets on the same cores; this probe's latencies say
how fast the coordinator answers a heartbeat meanwhile, so the two can be told apart.

    python bench/load_probe.py --address 127.0.0.1:PORT --token-file agent.token
      registers (device class "load-probe"), heartbeats until its stdin closes, then prints one
      JSON line: {"calls", "failed", "p50_ms", "p99_ms", "max_ms"}"""
from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402

from shared.auth import METADATA_KEY, SCHEME, AgentIdentity  # noqa: E402
from shared.pb.qfarm.v1 import farm_pb2, farm_pb2_grpc  # noqa: E402
from shared.version import PROTOCOL_VERSION  # noqa: E402

DEVICE = "load-probe"


def percentile(ms: list[float], q: float) -> float | None:
    ms = sorted(ms)
    return round(ms[min(len(ms) - 1, int(q * len(ms)))], 2) if ms else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--address", required=True)
    parser.add_argument("--token-file", type=Path, required=True, help="the agent role's token")
    parser.add_argument("--every", type=float, default=0.1, help="seconds between heartbeats")
    args = parser.parse_args(argv)
    auth = ((METADATA_KEY, SCHEME + args.token_file.read_text().strip()),)
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    latencies: list[float] = []
    failed = 0
    with grpc.insecure_channel(args.address) as channel:
        stub = farm_pb2_grpc.AgentServiceStub(channel)
        caps = farm_pb2.AgentCapabilities(slots=1, protocol_version=PROTOCOL_VERSION,
                                          host=farm_pb2.HostInfo(hostname="load-probe", cores=1))
        reply = stub.Register(farm_pb2.RegisterRequest(device=DEVICE, name="load-probe", capabilities=caps),
                              metadata=auth, timeout=60)
        identity = AgentIdentity(reply.agent_id, reply.agent_secret)
        request = farm_pb2.HeartbeatRequest(agent_id=identity.agent_id, free_slots=1)
        metadata = auth + identity.metadata()
        while not stop.wait(args.every):
            started = time.monotonic()
            try:
                stub.Heartbeat(request, metadata=metadata, timeout=10)
            except grpc.RpcError:
                failed += 1
                continue
            latencies.append(1000 * (time.monotonic() - started))
        stub.Deregister(farm_pb2.DeregisterRequest(agent_id=identity.agent_id), metadata=metadata, timeout=10)
    print(json.dumps({"calls": len(latencies) + failed, "failed": failed, "p50_ms": percentile(latencies, 0.5),
                      "p99_ms": percentile(latencies, 0.99), "max_ms": round(max(latencies, default=0.0), 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
