#!/usr/bin/env python3
"""A stdlib-only stand-in for `warden serve-model`, for supervisor tests.

Answers GET /health, GET /ready (after --load-delay), POST /infer (echo), GET /metadata;
prints lines to stdout and stderr; exits 0 on SIGTERM. --exit-code N exits at once.
--ignore-term ignores SIGTERM (to exercise the SIGKILL after stop_timeout).
--infer-delay S makes every POST /infer take S seconds (a slow model).
"""
import argparse
import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

p = argparse.ArgumentParser()
p.add_argument("--port", type=int, required=True)
p.add_argument("--name", default="fake")
p.add_argument("--load-delay", type=float, default=0.0)
p.add_argument("--exit-code", type=int, default=None)
p.add_argument("--ignore-term", action="store_true")
p.add_argument("--tag", default="")
p.add_argument("--infer-delay", type=float, default=0.0, help="seconds each POST /infer takes")
p.add_argument("--spew", action="store_true", help="write a 4 MiB line and binary garbage first")
args = p.parse_args()

print(f"fake model {args.name} pid {os.getpid()} starting tag={args.tag}", flush=True)
print(f"stderr hello from {args.name}", file=sys.stderr, flush=True)
if args.spew:
    sys.stdout.buffer.write(b"huge:" + b"x" * (4 << 20) + b"\n")
    sys.stdout.buffer.write(bytes(range(256)) * 64 + b"\n")
    sys.stdout.buffer.write(b"after the noise\n")
    sys.stdout.flush()
if args.exit_code is not None:
    print(f"exiting at once with {args.exit_code}", file=sys.stderr, flush=True)
    sys.exit(args.exit_code)

started = time.monotonic()


class Handler(BaseHTTPRequestHandler):
    def log_message(self, fmt, *a):
        pass

    def reply(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/health":
            self.reply(200, {"status": "ok"})
        elif self.path == "/ready":
            if time.monotonic() - started >= args.load_delay:
                self.reply(200, {"ready": True})
            else:
                self.reply(503, {"ready": False})
        elif self.path == "/metadata":
            self.reply(200, {"name": args.name, "version": "fake"})
        else:
            self.reply(404, {"error": {"code": "not_found", "message": self.path}})

    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(n)
        print(f"infer {len(body)} bytes", flush=True)
        if args.infer_delay > 0:
            time.sleep(args.infer_delay)
        self.reply(200, {"outputs": json.loads(body or b"{}").get("inputs", [])})


server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
server.daemon_threads = True


def on_term(signum, frame):
    print("SIGTERM: shutting down", flush=True)
    threading.Thread(target=server.shutdown, daemon=True).start()


signal.signal(signal.SIGTERM, signal.SIG_IGN if args.ignore_term else on_term)
print(f"listening on 127.0.0.1:{args.port}", flush=True)
server.serve_forever()
print("bye", flush=True)
