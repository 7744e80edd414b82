"""A stand-in OTLP/HTTP collector for the tracing benchmarks: ``python -m bench.otlp_sink PORT``.

Runs in a process of its own (so its work never shares the measured process's
interpreter lock), answers every ``POST /v1/traces`` with 200 and an empty protobuf
response, and counts requests and bytes (printed on SIGTERM). It does not decode the
spans: the receiving side's cost is not the bridge's.
"""

from __future__ import annotations

import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType

COUNTS = {"requests": 0, "bytes": 0}


class Sink(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        size = int(self.headers.get("Content-Length", "0"))
        self.rfile.read(size)
        COUNTS["requests"] += 1
        COUNTS["bytes"] += size
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def main() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Sink)

    def stop(_sig: int, _frame: FrameType | None) -> None:
        print(f"otlp sink: {COUNTS['requests']} requests, {COUNTS['bytes']} bytes",
              flush=True)
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
