"""A real HTTP proxy process that injects faults between importer and an MLflow server.

    python tests/proxy.py --upstream http://127.0.0.1:5000 --port 6000 --seed 1 \\
        --fail 0.1 --drop-before 0.1 --drop-after 0.1 --delay-ms 50

Per request, at random: answer 503 without forwarding (--fail); close the connection without
forwarding (--drop-before); answer as a server whose SQL store ran out of connections
(--out-of-connections: a 400, though it is an overload); forward, then close or reset the
connection instead of answering, so the server acted but the client never hears of it
(--drop-after); and sleep up to --delay-ms first.
--latency-ms L makes it a far server instead: every request waits exactly L/2 before it is forwarded
and L/2 before it is answered (one round trip of a link with L ms of latency), and answers leave at
once (TCP_NODELAY, as nginx and most proxies send), so the link adds L and nothing else.
Paths starting with --refuse get a 404, as from a server or gateway that has no such endpoint.
With --only PREFIX, failures and drops hit only requests whose path starts with PREFIX.
--rounds records each request's round trip, as [method, path, round] in the stats' "trips": one
more than the highest round among the requests answered before it came. With a latency well
above the client's own time between an answer and the request it leads to, that is the length of
the chain of round trips that led to the request (a slow client can only make it longer).
`GET /__proxy_stats` returns the counts as JSON. Bounded: it exits after --max-seconds.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

# What MLflow 3's server answered to a log-batch when every connection of its SQL store's pool
# was taken for 30 s (32 requests in flight on a busy 2-core machine, SQLite).
OUT_OF_CONNECTIONS = (b'{"error_code": "BAD_REQUEST", "message": "QueuePool limit of size 5 overflow 10 reached, '
                      b'connection timed out, timeout 30.00 (Background on this error at: '
                      b'https://sqlalche.me/e/21/3o7r)", "sqlstate": "KAM00", "error_class": "INVALID_PARAMETER_VALUE"}')
HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--upstream", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fail", type=float, default=0.0)
    ap.add_argument("--out-of-connections", type=float, default=0.0)
    ap.add_argument("--drop-before", type=float, default=0.0)
    ap.add_argument("--drop-after", type=float, default=0.0)
    ap.add_argument("--delay-ms", type=float, default=0.0)
    ap.add_argument("--latency-ms", type=float, default=0.0)
    ap.add_argument("--refuse", default=None)
    ap.add_argument("--only", default="")
    ap.add_argument("--rounds", action="store_true")
    ap.add_argument("--max-seconds", type=float, default=900)
    args = ap.parse_args()
    upstream = urlsplit(args.upstream)
    rng = random.Random(args.seed)
    lock = threading.Lock()
    stats = {"requests": 0, "fail": 0, "out_of_connections": 0, "drop_before": 0, "drop_after": 0,
             "forwarded": 0, "refused": 0, "trips": []}
    answered = [0]  # the highest round answered so far

    half_trip = args.latency_ms / 2000

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body are two writes: with Nagle's algorithm a small body waits for the
        # client's delayed ACK of the headers (about 40 ms on a kept-alive connection).
        disable_nagle_algorithm = args.latency_ms > 0
        round = 0  # of the request being handled (see --rounds); the stats' own requests: none

        def log_message(self, *a) -> None:
            pass

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                out = b""
                while True:
                    size = int(self.rfile.readline().split(b";")[0], 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        return out
                    out += self.rfile.read(size)
                    self.rfile.readline()
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _drop(self, reset: bool) -> None:
            if reset:  # RST instead of FIN
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True

        def _answered(self) -> None:
            # Counted before the answer leaves: a request it leads to must never look earlier.
            with lock:
                answered[0] = max(answered[0], self.round)

        def _answer(self, status: int, content_type: str, data: bytes) -> None:
            self._answered()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _handle(self) -> None:
            body = self._body()
            if self.path == "/__proxy_stats":
                return self._answer(200, "application/json", json.dumps(stats).encode())
            with lock:
                stats["requests"] += 1
                self.round = answered[0] + 1
                if args.rounds:
                    stats["trips"].append([self.command, self.path.split("?")[0], self.round])
                roll = rng.random() if self.path.startswith(args.only) else 1.0
                delay = rng.random() * args.delay_ms / 1000
                reset = rng.random() < 0.5
            time.sleep(delay + half_trip)
            if args.refuse and self.path.startswith(args.refuse):
                with lock:
                    stats["refused"] += 1
                return self._answer(404, "text/html", b"<!doctype html><title>404 Not Found</title>")
            if roll < args.fail:
                with lock:
                    stats["fail"] += 1
                return self._answer(503, "application/json",
                                    b'{"error_code": "TEMPORARILY_UNAVAILABLE", "message": "injected by proxy"}')
            roll -= args.fail
            if roll < args.out_of_connections:
                with lock:
                    stats["out_of_connections"] += 1
                return self._answer(400, "application/json", OUT_OF_CONNECTIONS)
            roll -= args.out_of_connections
            if roll < args.drop_before:
                with lock:
                    stats["drop_before"] += 1
                return self._drop(reset)
            roll -= args.drop_before
            conn = http.client.HTTPConnection(upstream.hostname, upstream.port, timeout=300)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
            headers["Content-Length"] = str(len(body))
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            conn.close()
            if roll < args.drop_after:
                with lock:
                    stats["drop_after"] += 1
                return self._drop(reset)
            with lock:
                stats["forwarded"] += 1
            time.sleep(half_trip)
            self._answered()
            self.send_response(resp.status)
            for k, v in resp.getheaders():
                if k.lower() not in HOP and k.lower() != "content-length":
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle

    ThreadingHTTPServer.request_queue_size = 128  # connections opened at once (5: resets at 32)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    threading.Timer(args.max_seconds, server.shutdown).start()
    server.serve_forever()


def start(upstream: str, port: int, max_seconds: float = 600, **options) -> tuple[subprocess.Popen, str]:
    """This proxy as a process in front of `upstream`, listening on `port`, once it answers:
    (the process, its URL). `options` are its flags: drop_after=0.5 is --drop-after 0.5, rounds=True
    is --rounds."""
    args = [sys.executable, __file__, "--upstream", upstream, "--port", str(port),
            "--max-seconds", str(max_seconds)]
    for k, v in options.items():
        flag = f"--{k.replace('_', '-')}"
        args += [flag] if v is True else [flag, str(v)]
    proc = subprocess.Popen(args)
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            urllib.request.urlopen(f"{url}/__proxy_stats", timeout=1).close()
            return proc, url
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the proxy did not start")


if __name__ == "__main__":
    main()
