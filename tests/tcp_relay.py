"""A TCP relay standing in for a phone's Wi-Fi link: `python -m tests.tcp_relay LISTEN_HOST LISTEN_PORT
TARGET_HOST TARGET_PORT` forwards every connection; SIGUSR1 drops all open ones and answers `cut N`
on stdout. It runs in its own process because TVM's RPC client blocks in C++ holding the GIL, which
would starve a relay thread in the test process."""
from __future__ import annotations

import contextlib
import signal
import socket
import sys
import threading


class Relay:
    def __init__(self, listen: tuple[str, int], target: tuple[str, int]):
        self.target = target
        self.server = socket.create_server(listen)
        self.pairs: list[tuple[socket.socket, socket.socket]] = []
        self.lock = threading.Lock()

    def serve(self) -> None:
        while True:
            client, _ = self.server.accept()
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self.lock:
                self.pairs.append((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(1 << 16):
                dst.sendall(data)
        except OSError:
            pass                  # the link was cut, or the peer went away: end both directions
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def cut(self) -> int:
        with self.lock:
            pairs, self.pairs = self.pairs, []
        for pair in pairs:
            for sock in pair:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        return len(pairs)


def main(argv: list[str]) -> int:
    relay = Relay((argv[0], int(argv[1])), (argv[2], int(argv[3])))
    signal.signal(signal.SIGUSR1, lambda signum, frame: print(f"cut {relay.cut()}", flush=True))
    print("ready", flush=True)
    relay.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
