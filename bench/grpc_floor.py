"""The floor under bench/load.py's dispatch numbers: the server-side CPU of one unary call on a
bare grpc.aio server (one generic method that returns its request, no auth, no store), driven by
a grpc.aio client in another process with 16 calls in flight, as 16 fake agents keep them.

On the unary protocol (protocol 3) a dispatched job costs at least two such calls (Lease,
ReportResult): twice this number is what the coordinator's CPU per job cannot go below there. On
the Work stream a job is one message each way on a call that stays open: `stream` measures one
such round trip (16 streams, each writing a message and reading the answer). Printed per variant:
`plain` answers on the loop, `hop` also passes through a thread pool and back (what a store call
on an executor adds), `stream` as said. Numbers, not a test.

    python bench/grpc_floor.py --calls 10000 --repeats 3"""
from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import psutil

PAYLOAD = b"x" * 300        # about a heartbeat's or a small result's size


def _serve(port_queue, variant: str) -> None:
    pool = ThreadPoolExecutor(2)

    async def echo(request: bytes, context) -> bytes:
        if variant == "hop":
            await asyncio.get_running_loop().run_in_executor(pool, bytes, request)
        return request

    async def echo_stream(requests, context):
        async for request in requests:
            yield request

    async def main() -> None:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "floor.Floor", {"Echo": grpc.unary_unary_rpc_method_handler(echo),
                            "EchoStream": grpc.stream_stream_rpc_method_handler(echo_stream)}),))
        port_queue.put(server.add_insecure_port("127.0.0.1:0"))
        await server.start()
        await server.wait_for_termination()

    asyncio.run(main())


async def _drive(port: int, calls: int, in_flight: int, variant: str) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        echo = channel.unary_unary("/floor.Floor/Echo")
        echo_stream = channel.stream_stream("/floor.Floor/EchoStream")

        async def caller(n: int) -> None:
            if variant == "stream":
                call = echo_stream()
                for _ in range(n):
                    await call.write(PAYLOAD)
                    await call.read()
                await call.done_writing()
                await call.code()
                return
            for _ in range(n):
                await echo(PAYLOAD)

        await asyncio.gather(*(caller(calls // in_flight) for _ in range(in_flight)))


def measure(variant: str, calls: int, in_flight: int) -> tuple[float, float]:
    """(server CPU ms per call or stream round trip, per second) after a warm-up of calls // 5."""
    ports: mp.Queue = mp.Queue()
    server = mp.Process(target=_serve, args=(ports, variant), daemon=True)
    server.start()
    try:
        port, ps = ports.get(timeout=60), psutil.Process(server.pid)
        asyncio.run(_drive(port, calls // 5, in_flight, variant))
        cpu0, t0 = sum(ps.cpu_times()[:2]), time.monotonic()
        asyncio.run(_drive(port, calls, in_flight, variant))
        cpu, wall = sum(ps.cpu_times()[:2]) - cpu0, time.monotonic() - t0
    finally:
        server.kill()
        server.join()
    return 1000 * cpu / calls, calls / wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=10_000)
    parser.add_argument("--in-flight", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"grpcio {grpc.__version__}, {os.cpu_count()} cores, load average {os.getloadavg()}")
    for repeat in range(args.repeats):
        for variant in ("plain", "hop", "stream"):          # interleaved: the machine's load moves
            ms, rate = measure(variant, args.calls, args.in_flight)
            unit = "round trip" if variant == "stream" else "call"
            print(f"  {repeat + 1} {variant:6}: server CPU {ms:.3f} ms per {unit}, {rate:.0f}/s")
    print(f"load average at the end {os.getloadavg()}")


if __name__ == "__main__":
    main()
