#!/usr/bin/env python
"""Bounded load test of ``attendo serve`` on this machine: N concurrent clients send a fixed
number of /translate requests; prints throughput (requests/s, sentences/s), latency
percentiles and the error count as JSON.

It starts the server itself (``python -m attendo serve``, one subprocess per run) unless
``--url`` names a running one. ``--compare`` runs twice, with batching (``--max-batch``) and
without (``--max-batch 1``), against the same model with the same requests, and reports the
ratio. Only loopback addresses are accepted as targets; every request has a timeout and
the whole run a deadline.

    python bench/serve_load.py --model runs/multi30k_rnn \\
        --input data/multi30k/test_2016_flickr.de --clients 16 --requests 400 --compare
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import os
import platform
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(host: str, port: int, path: str, timeout: float = 5.0) -> dict:
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def start_server(args, max_batch: int) -> tuple[subprocess.Popen, int, list[str]]:
    port = free_port()
    cmd = [sys.executable, "-m", "attendo", "serve", "--model", args.model, "--host", "127.0.0.1",
           "--port", str(port), "--threads", str(args.threads), "--max-batch", str(max_batch),
           "--max-wait-ms", str(args.max_wait_ms), "--log-level", "warning"]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            get_json("127.0.0.1", port, "/health", 1.0)
            return proc, port, cmd[1:]
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("server did not come up within 120 s")


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, int(round(q / 100 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[k]


def load(host: str, port: int, sentences: list[str], args) -> dict:
    """args.clients threads, args.requests requests in all (plus args.warmup not counted)."""
    lock = threading.Lock()
    next_req = [0]
    latencies: list[float] = []
    errors: list[str] = []
    deadline = time.time() + args.max_seconds

    def body(i: int) -> bytes:
        k = i * args.sents_per_request
        texts = [sentences[(k + j) % len(sentences)] for j in range(args.sents_per_request)]
        return json.dumps({"text": texts, "beam": args.beam}).encode()

    def client(count: bool, total: int) -> None:
        conn = http.client.HTTPConnection(host, port, timeout=args.timeout)
        while True:
            with lock:
                i = next_req[0]
                next_req[0] += 1
            if i >= total or time.time() > deadline:
                break
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/translate", body=body(i),
                             headers={"Content-Type": "application/json"})
                r = conn.getresponse()
                data = r.read()
                ok = r.status == 200 and len(json.loads(data)["translations"]) == \
                    args.sents_per_request
                err = None if ok else f"HTTP {r.status}: {data[:200]!r}"
            except Exception as e:  # a failed request counts as an error, the run goes on
                err = f"{type(e).__name__}: {e}"
                conn.close()
                conn = http.client.HTTPConnection(host, port, timeout=args.timeout)
            dt = time.perf_counter() - t0
            if count:
                with lock:
                    (errors.append(err) if err else latencies.append(dt))
        conn.close()

    def run(count: bool, total: int) -> float:
        next_req[0] = 0
        threads = [threading.Thread(target=client, args=(count, total))
                   for _ in range(args.clients)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return time.perf_counter() - t0

    if args.warmup:
        run(False, args.warmup)
    before = get_json(host, port, "/health")["stats"]
    wall = run(True, args.requests)
    after = get_json(host, port, "/health")["stats"]
    lat = sorted(latencies)
    done = len(lat)
    return {
        "requests": args.requests,
        "completed": done,
        "errors": len(errors),
        "first_errors": errors[:3],
        "wall_s": round(wall, 2),
        "req_per_s": round(done / wall, 2),
        "sents_per_s": round(done * args.sents_per_request / wall, 2),
        "latency_ms": {
            "p50": round(1000 * percentile(lat, 50), 1),
            "p90": round(1000 * percentile(lat, 90), 1),
            "p99": round(1000 * percentile(lat, 99), 1),
            "max": round(1000 * lat[-1], 1) if lat else None,
            "mean": round(1000 * sum(lat) / done, 1) if done else None,
        },
        "translator_calls": after["translator_calls"] - before["translator_calls"],
        "sentences_per_call": round((after["sentences"] - before["sentences"])
                                    / max(1, after["translator_calls"]
                                          - before["translator_calls"]), 2),
    }


def machine() -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="model directory (the script starts the server)")
    p.add_argument("--url", help="a running server on this machine instead, e.g. "
                                 "http://127.0.0.1:8000")
    p.add_argument("--input", help="sentences, one per line (default: a few built-in ones)")
    p.add_argument("--clients", type=int, default=16, help="concurrent clients (16)")
    p.add_argument("--requests", type=int, default=400, help="requests per run (400)")
    p.add_argument("--sents-per-request", type=int, default=1)
    p.add_argument("--beam", type=int, default=5)
    p.add_argument("--warmup", type=int, default=16, help="uncounted requests first (16)")
    p.add_argument("--threads", type=int, default=2, help="the server's torch threads (2)")
    p.add_argument("--max-batch", type=int, default=32, help="the server's --max-batch (32)")
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    p.add_argument("--compare", action="store_true",
                   help="also run with --max-batch 1 (no batching) and report the ratio")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    p.add_argument("--max-seconds", type=float, default=600.0, help="deadline of one run")
    p.add_argument("--output", help="also write the JSON here")
    args = p.parse_args()
    if not args.model and not args.url:
        p.error("give --model DIR (start a server) or --url URL (use a running one)")
    if args.url and args.compare:
        p.error("--compare starts its own servers; give --model, not --url")
    sentences = ["Ein Mann fährt Fahrrad.", "Zwei Hunde spielen im Schnee.",
                 "Eine Frau sitzt auf einer Bank und liest ein Buch.", "Kinder spielen."]
    if args.input:
        sentences = [s for s in Path(args.input).read_text(encoding="utf-8").splitlines()
                     if s.strip()]
    report = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "machine": machine(),
        "clients": args.clients,
        "requests": args.requests,
        "sents_per_request": args.sents_per_request,
        "beam": args.beam,
        "runs": {},
    }
    if args.url:
        u = urlparse(args.url)
        if u.hostname not in LOOPBACK:
            p.error(f"--url must be on this machine ({', '.join(LOOPBACK)}), got {u.hostname}")
        report["runs"]["server"] = load(u.hostname, u.port or 80, sentences, args)
    else:
        settings = [("batching", args.max_batch)] + ([("no_batching", 1)] if args.compare else [])
        report.update(model=args.model, server_threads=args.threads,
                      max_wait_ms=args.max_wait_ms)
        for name, max_batch in settings:
            proc, port, cmd = start_server(args, max_batch)
            try:
                result = load("127.0.0.1", port, sentences, args)
            finally:
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
            report["runs"][name] = {"server": " ".join(cmd), **result}
            print(f"{name}: {result['req_per_s']} req/s, p50 {result['latency_ms']['p50']} ms, "
                  f"p99 {result['latency_ms']['p99']} ms, errors {result['errors']}",
                  file=sys.stderr)
        if args.compare:
            a, b = report["runs"]["batching"], report["runs"]["no_batching"]
            report["throughput_ratio"] = round(a["sents_per_s"] / max(b["sents_per_s"], 1e-9), 2)
    text = json.dumps(report, indent=2, ensure_ascii=False)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
