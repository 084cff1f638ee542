"""HTTP latency and throughput of `leukostage serve` (gunicorn) on loopback, bounded in time.

1. Latency: single requests one after another (POST /predict, one 224x224 JPEG smear), p50 / p95 / mean.
2. Throughput: 8 concurrent clients posting the same image for a fixed time; requests per second and p50 / p95.

The server is started here (`python -m leukostage.cli serve`, default workers = cores) on a free 127.0.0.1 port and
stopped at the end; --url measures a server that is already running. Each request opens a new connection (gunicorn's
sync workers close after every response). The image is one the validator accepts, so every request runs the model.
Other load on the machine (e.g. a training job) slows every number: the report includes the load average.

    python benchmarks/bench_http.py [--models OLD.onnx NEW.onnx] [--rounds 3] [--workers N] [--seconds 10]
                                    [--json out.json]

With several models, each round starts one server per model in turn (the same image, the same phases), so the
models meet the same machine load; every number is the median over the rounds, and each model after the first
gets its p50 ratio to the first.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import cv2
from timing import report  # benchmarks/timing.py

from leukostage.cores import cpu_count
from leukostage.predict import default_model_path
from leukostage.training.data import default_data_dir

TARGET_P50_MS = 15.0  # issue 9: HTTP /predict p50 for a 224x224 JPEG on the 2-core machine
TARGET_RPS = 80.0


def sample_jpeg(data_dir: Path) -> list[tuple[bytes, str]]:
    """224x224 JPEGs of genuine smears: Taleqani images are that size already; a BCCD field is resized."""
    candidates = sorted((data_dir / "taleqani_all" / "original" / "cancerous" / "mid").glob("*.jpg"))[:20]
    out = [(p.read_bytes(), str(p)) for p in candidates]
    bccd = data_dir / "bccd_smears" / "BloodImage_00000.jpg"
    if bccd.is_file():
        small = cv2.resize(cv2.imread(str(bccd)), (224, 224), interpolation=cv2.INTER_AREA)
        out.append((cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes(), f"{bccd} (224x224)"))
    return out


def multipart(data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="smear.jpg"\r\n'
            f"Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def request(host: str, port: int, body: bytes, content_type: str) -> tuple[int, float, dict]:
    """One POST /predict on a new connection: (status, client-side milliseconds, JSON body)."""
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.request("POST", "/predict", body=body, headers={"Content-Type": content_type})
        response = conn.getresponse()
        payload = json.loads(response.read())
    finally:
        conn.close()
    return response.status, (time.perf_counter() - t0) * 1000, payload


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def summary(latencies: list[float]) -> dict:
    return {
        "n": len(latencies),
        "p50_ms": round(percentile(latencies, 50), 2),
        "p95_ms": round(percentile(latencies, 95), 2),
        "mean_ms": round(statistics.fmean(latencies), 2),
    }


def start_server(model: str, workers: int) -> tuple[subprocess.Popen, int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "leukostage.cli",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(workers),
            "--model",
            model,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"leukostage serve exited with {proc.returncode}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/api/v1/health")
            if conn.getresponse().status == 200:
                conn.close()
                return proc, port
        except OSError:
            time.sleep(0.1)
    stop_server(proc)
    raise SystemExit("leukostage serve did not become healthy in 60 s")


def stop_server(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def worker_cpu_s(master: int | None) -> float | None:
    """User + system CPU seconds used so far by the gunicorn workers of ``master`` (from /proc), None if unknown."""
    children = Path(f"/proc/{master}/task/{master}/children") if master else None
    if children is None or not children.exists():
        return None
    total = 0
    for pid in children.read_text().split():
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / os.sysconf("SC_CLK_TCK")


def sequential(host: str, port: int, body: bytes, ctype: str, seconds: float, max_requests: int) -> dict:
    latencies, server_ms = [], []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and len(latencies) < max_requests:
        status, ms, payload = request(host, port, body, ctype)
        if status != 200:
            raise SystemExit(f"unexpected status {status}: {payload}")
        latencies.append(ms)
        server_ms.append(payload["timing_ms"]["total"])
    return {**summary(latencies), "server_total_p50_ms": round(percentile(server_ms, 50), 2)}


def concurrent(host: str, port: int, body: bytes, ctype: str, seconds: float, clients: int) -> dict:
    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def client():
        while time.monotonic() < stop_at:
            try:
                status, ms, _ = request(host, port, body, ctype)
            except Exception as exc:
                with lock:
                    failures.append(type(exc).__name__)
                continue
            with lock:
                (latencies.append(ms) if status == 200 else failures.append(str(status)))

    t0 = time.monotonic()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    return {
        "clients": clients,
        "seconds": round(elapsed, 2),
        "requests_per_s": round(len(latencies) / elapsed, 1),
        "failures": len(failures),
        **summary(latencies),
    }


def measure_server(host: str, port: int, body: bytes, ctype: str, args, proc) -> dict:
    """One server: warm-up, sequential latency, then concurrent throughput (with the server's CPU per request)."""
    for _ in range(20):  # warm-up: every worker's first requests
        request(host, port, body, ctype)
    single = sequential(host, port, body, ctype, args.seconds, args.max_requests)
    cpu0, client0 = worker_cpu_s(proc and proc.pid), time.process_time()
    load = concurrent(host, port, body, ctype, args.seconds, args.clients)
    cpu1, client1 = worker_cpu_s(proc and proc.pid), time.process_time()
    n = load["n"] + load["failures"]
    if cpu0 is not None and cpu1 is not None and n:
        # CPU the server spent per request; on an otherwise idle machine the cores allow about this many req/s
        per_request_ms = (cpu1 - cpu0) * 1000 / n
        load["server_cpu_ms_per_request"] = round(per_request_ms, 2)
        load["client_cpu_ms_per_request"] = round((client1 - client0) * 1000 / n, 2)
        load["idle_machine_capacity_estimate_rps"] = round(cpu_count() * 1000 / per_request_ms, 1)
    return {"single": single, "concurrent": load}


def accepted_sample(host: str, port: int, data_dir: Path) -> tuple[bytes, str, bytes, str]:
    for data, source in sample_jpeg(data_dir):
        body, ctype = multipart(data)
        if request(host, port, body, ctype)[0] == 200:
            return data, source, body, ctype
    raise SystemExit("no sample image was accepted by the validator")


def median_of(runs: list[dict]) -> dict:
    """Each number's median over the rounds (nested dicts kept)."""
    out: dict = {}
    for key, value in runs[0].items():
        if isinstance(value, dict):
            out[key] = median_of([r[key] for r in runs])
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = round(statistics.median(r[key] for r in runs), 2)
        else:
            out[key] = value
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models",
        nargs="+",
        default=[str(default_model_path())],
        help="ONNX models, measured in alternating rounds; the first is the baseline",
    )
    parser.add_argument("--model", default=None, help="one model (same as --models M)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds per model; each number is their median")
    parser.add_argument("--workers", type=int, default=None, help="gunicorn workers (default: cores)")
    parser.add_argument("--url", default=None, help="measure this running server instead of starting one")
    parser.add_argument("--data", default=str(default_data_dir()))
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each phase")
    parser.add_argument("--max-requests", type=int, default=500, help="cap on the sequential phase")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    models = [args.model] if args.model else args.models

    workers = args.workers or cpu_count()
    load_before = os.getloadavg()
    runs: dict[str, list[dict]] = {m: [] for m in models}
    for _ in range(args.rounds):
        for model in models if not args.url else models[:1]:
            proc = None
            if args.url:
                parts = urlsplit(args.url)
                host, port = parts.hostname, parts.port or 80
            else:
                proc, port = start_server(model, workers)
                host = "127.0.0.1"
            try:
                data, source, body, ctype = accepted_sample(host, port, Path(args.data))
                runs[model].append(measure_server(host, port, body, ctype, args, proc))
            finally:
                if proc is not None:
                    stop_server(proc)
    load_after = os.getloadavg()
    per_model = {m: median_of(r) for m, r in runs.items() if r}
    for res in per_model.values():
        res["targets"] = {
            "p50_ms": TARGET_P50_MS,
            "requests_per_s": TARGET_RPS,
            "p50_met": res["single"]["p50_ms"] <= TARGET_P50_MS,
            "throughput_met": res["concurrent"]["requests_per_s"] >= TARGET_RPS,
        }
    base = per_model[models[0]]
    for m in list(per_model)[1:]:
        per_model[m]["p50_ratio_to_baseline"] = round(per_model[m]["single"]["p50_ms"] / base["single"]["p50_ms"], 3)
    result = {
        "image": source,
        "image_bytes": len(data),
        "cores": cpu_count(),
        "workers": None if args.url else workers,
        "rounds": args.rounds,
        "baseline": models[0],
        "loadavg_1m_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
        "models": per_model,
    }
    report(result, args.json)


if __name__ == "__main__":
    main()
