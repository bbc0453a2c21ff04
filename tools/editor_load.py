"""Load test of the face editor: concurrent clients dragging sliders against a real server.

    python -m tools.editor_load                                   # checkpoints/best_vae.pth
    python -m tools.editor_load --checkpoint checkpoints/gaussian/best_vae.pth --clients 20 --requests 50

Starts `inference.py --serve` on a free port of 127.0.0.1 (a subprocess, so its memory is its own's),
then, for each of --rounds rounds, --clients threads each open a session of their own, pick a
generated face of their own and send --requests slider edits back to back (random values of the
page's first sliders), as a page does while a slider is dragged. Every answer must be a PNG of the
model's size and equal the answer the same request gets when sent alone afterwards (a crossed session
or a torn image would differ). Reports latency (p50, p95, max), throughput and the server's resident
memory after each round (new sessions every round: the session store must not grow it), and writes
{paths.results_dir}/editor_load.json. A benchmark: no figure is asserted; wrong answers are an error.
"""

import collections
import http.client
import io
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Sequence
from urllib.parse import urlsplit

import numpy as np
from PIL import Image

from src.cli import argument_parser
from src.config import load_config
from src.errors import UserError, run_cli
from src.files import atomic_json, ensure_writable_dir

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT = 600   # seconds; the first start of a checkpoint fits its directions and mixture


class Client:
    """One browser's HTTP: a kept-alive connection to the editor, and its session cookie."""

    def __init__(self, url: str, timeout: float = 120):
        parts = urlsplit(url)
        self.connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
        self.cookie = None

    def request(self, method: str, path: str, body: bytes | dict | None = None, headers: dict | None = None,
                ) -> tuple[int, dict[str, str], bytes]:
        """(status, headers in lower case, body); a dict body is sent as JSON."""
        headers = dict(headers or {})
        if isinstance(body, dict):
            body, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
        if self.cookie:
            headers["Cookie"] = self.cookie
        self.connection.request(method, path, body=body, headers=headers)
        response = self.connection.getresponse()
        data = response.read()
        if response.getheader("set-cookie"):
            self.cookie = response.getheader("set-cookie").split(";")[0]
        return response.status, {k.lower(): v for k, v in response.getheaders()}, data

    def post(self, path: str, body: bytes | dict | None = None, headers: dict | None = None):
        return self.request("POST", path, body, headers)

    def get(self, path: str):
        return self.request("GET", path)

    def json(self, method: str, path: str, body: dict | None = None) -> dict:
        status, _, data = self.request(method, path, body)
        if status != 200:
            raise UserError(f"{method} {path} answered {status}: {data[:200].decode(errors='replace')}")
        return json.loads(data)

    def close(self) -> None:
        self.connection.close()


def resident_mb(pid: int) -> tuple[float | None, float | None]:
    """(resident, peak resident) memory of a process in MB, from /proc (None elsewhere than Linux)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None, None
    kb = {line.split(":")[0]: int(line.split()[1]) for line in status.splitlines()
          if line.startswith(("VmRSS", "VmHWM"))}
    return kb.get("VmRSS", 0) / 1024, kb.get("VmHWM", 0) / 1024


class Server:
    """`inference.py --serve --port 0` in a subprocess: its URL once it listens, its output kept."""

    def __init__(self, options: list[str]):
        cmd = [sys.executable, str(REPO / "inference.py"), "--serve", "--port", "0", *options]
        self.process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.output = collections.deque(maxlen=50)
        self.url, started = None, threading.Event()
        threading.Thread(target=self._drain, args=(started,), daemon=True).start()  # a full pipe would block it
        if not started.wait(START_TIMEOUT) or self.url is None:
            self.stop()
            last = " | ".join(line.strip() for line in list(self.output)[-3:] if line.strip())
            raise UserError(f"the editor's server did not start: {last}")

    def _drain(self, started: threading.Event) -> None:
        for line in self.process.stdout:
            self.output.append(line)
            if "face editor on http://" in line:
                self.url = line.split("face editor on ")[1].split()[0]
                started.set()
        started.set()  # it exited

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def one_client(url: str, names: list[str], requests: int, seed: int, start: threading.Barrier) -> dict:
    """A session dragging sliders: its latencies (s), and what was sent and answered."""
    client, rng = Client(url), np.random.default_rng(seed)
    sent, answers, latencies, errors = [], [], [], []
    try:
        client.json("POST", "/api/generated/edit", {"sampler": "prior", "seed": seed, "n": 1, "index": 0})
        start.wait()
        for _ in range(requests):
            body = {"values": {n: round(float(v), 2) for n, v in zip(names, rng.uniform(-1, 1, len(names)))}}
            began = time.perf_counter()
            status, headers, data = client.post("/api/edit", body)
            latencies.append(time.perf_counter() - began)
            sent.append(body)
            answers.append(data if status == 200 and headers.get("content-type") == "image/png" else None)
            if answers[-1] is None:
                errors.append(f"{status}: {data[:120].decode(errors='replace')}")
    except (OSError, http.client.HTTPException, UserError) as e:
        errors.append(f"{type(e).__name__}: {e}")
    return {"client": client, "sent": sent, "answers": answers, "latencies": latencies, "errors": errors}


def mb(value: float | None) -> str:
    return "unknown" if value is None else f"{value:.0f} MB"


def is_face_png(data: bytes | None, size: int) -> bool:
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.format == "PNG" and img.size == (size, size)
    except Exception:
        return False


def run_round(url: str, names: list[str], clients: int, requests: int, size: int, seed: int) -> dict:
    """One round: `clients` concurrent sessions, then each one's first, middle and last request sent
    again alone, whose answers must be the same bytes."""
    start = threading.Barrier(clients)
    results = [None] * clients

    def work(i: int) -> None:
        results[i] = one_client(url, names, requests, seed * 1000 + i, start)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(clients)]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - began
    wrong, errors = 0, [e for r in results for e in r["errors"]]
    for r in results:
        wrong += sum(not is_face_png(a, size) for a in r["answers"]) + requests - len(r["answers"])
        checked = sorted({0, len(r["sent"]) // 2, len(r["sent"]) - 1}) if r["sent"] else []
        for k in [k for k in checked if r["answers"][k] is not None]:
            status, _, again = r["client"].post("/api/edit", r["sent"][k])
            if status != 200 or again != r["answers"][k]:
                wrong += 1
                errors.append(f"request {k} of a client answered differently when sent alone")
        r["client"].close()
    latencies = np.array([x for r in results for x in r["latencies"]]) * 1000
    return {"answered": int(len(latencies)), "wrong": int(wrong), "errors": errors[:5], "seconds": seconds,
            "latency_ms": {"p50": float(np.percentile(latencies, 50)), "p95": float(np.percentile(latencies, 95)),
                           "max": float(latencies.max()), "mean": float(latencies.mean())} if len(latencies) else None,
            "requests_per_second": len(latencies) / seconds}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argument_parser(__doc__.splitlines()[0], checkpoint=True)
    parser.add_argument("--clients", type=int, default=20, help="concurrent sessions (default 20)")
    parser.add_argument("--requests", type=int, default=50, help="slider requests per session (default 50)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds, each with new sessions (default 2)")
    args = parser.parse_args(argv)
    if min(args.clients, args.requests, args.rounds) < 1:
        raise UserError("--clients, --requests and --rounds must be at least 1")
    results_dir = ensure_writable_dir(load_config(args.config, args.overrides).paths.results_dir, "paths.results_dir")
    options = [*(["--checkpoint", args.checkpoint] if args.checkpoint else []),
               *(["--config", args.config] if args.config else []), *args.overrides]
    print("starting the editor (python inference.py --serve) ...")
    server = Server(options)
    try:
        info = Client(server.url).json("GET", "/api/info")
        if not info["shown"]:
            raise UserError("this checkpoint's server has no attribute sliders: " + " ".join(info["notes"]))
        memory = [resident_mb(server.process.pid)[0]]
        rounds = []
        for r in range(args.rounds):
            rounds.append(run_round(server.url, info["shown"], args.clients, args.requests, info["image_size"], r))
            memory.append(resident_mb(server.process.pid)[0])
            latency = rounds[-1]["latency_ms"] or {"p50": float("nan"), "p95": float("nan"), "max": float("nan")}
            print(f"round {r + 1}: {rounds[-1]['answered']} answers, {rounds[-1]['wrong']} wrong, "
                  f"p50 {latency['p50']:.1f} ms, p95 {latency['p95']:.1f} ms, max {latency['max']:.1f} ms, "
                  f"{rounds[-1]['requests_per_second']:.0f} requests/s; server RSS {mb(memory[-1])}")
        peak = resident_mb(server.process.pid)[1]
    finally:
        server.stop()
    report = {"checkpoint": info["checkpoint"], "image_size": info["image_size"], "sliders": info["shown"],
              "clients": args.clients, "requests_per_client": args.requests, "cpu_cores": os.cpu_count(),
              "rounds": rounds, "server_rss_mb": {"before": memory[0], "after_each_round": memory[1:]},
              "server_peak_rss_mb": peak}
    out = results_dir / "editor_load.json"
    atomic_json(out, report)
    print(f"wrote {out}")
    wrong = sum(r["wrong"] for r in rounds)
    if wrong:
        raise UserError(f"{wrong} of {sum(r['answered'] for r in rounds)} answers were wrong: "
                        + "; ".join(e for r in rounds for e in r["errors"][:2]))


if __name__ == "__main__":
    run_cli(main)
