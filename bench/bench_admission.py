"""Admission server throughput and latency (not a test; prints figures).

Starts the real server in its own process (uvloop, httptools, TLS with hot reload, JSON decision
logging at info level to a file) with one trivial allowing handler on /validate, then drives it
from a separate load-generator process with two AdmissionReviews built from the Kubernetes 1.36
fixtures:

* a ~20 KB pod UPDATE (pods/status from the disruption controller, padded to 20 KB with a
  last-applied-configuration annotation, as `kubectl apply` leaves on real pods);
* a pod DELETE (kubectl delete, default grace).

Two load shapes each:

* fixed rate: 1,000 req/s, open loop (latency counted from the scheduled send time, so a stall
  is not hidden by coordinated omission), from a lean asyncio client over 16 keep-alive TLS
  connections;
* saturation: `wrk` (apt-get install wrk) when available, else the asyncio client closed-loop.

On a machine with at least 2 CPUs the server is pinned to CPU 0 and the load to CPU 1.

    .venv/bin/python bench/bench_admission.py [--seconds 10] [--rate 1000] [--log-level info]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(
    os.environ.get("KUBEGUARD_FIXTURES", REPO.parent / "shared" / "fixtures" / "k8s-1.36")
)
UPDATE_FIXTURE = "pod-status-update-disruption-target-reset-by-disruption-controller.json"
DELETE_FIXTURE = "pod-delete-by-user-kubectl-default-grace.json"
TARGET_UPDATE_BYTES = 20 * 1024


# --- payloads ------------------------------------------------------------------------------------


def _compact(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


def build_payloads() -> dict[str, bytes]:
    admission = FIXTURES / "admission"
    update = json.loads((admission / UPDATE_FIXTURE).read_text())
    update["request"]["uid"] = str(uuid.uuid4())
    annotations = update["request"]["object"]["metadata"].setdefault("annotations", {})
    pad = TARGET_UPDATE_BYTES - len(_compact(update)) - 60
    if pad > 0:
        # What `kubectl apply` stores on every object it manages.
        annotations["kubectl.kubernetes.io/last-applied-configuration"] = "x" * pad
    delete = json.loads((admission / DELETE_FIXTURE).read_text())
    return {"pod UPDATE": _compact(update), "pod DELETE": _compact(delete)}


# --- the server process --------------------------------------------------------------------------


def serve(cert_dir: Path, log_level: str) -> None:
    """Child process: the real server with a trivial allowing handler on /validate."""
    from kubeguard.admission import HandlerSpec, Request, Response, allowed
    from kubeguard.admission.registry import group_webhooks
    from kubeguard.cli import run_async
    from kubeguard.config import Settings
    from kubeguard.log import setup_logging
    from kubeguard.metrics import AdmissionMetrics
    from kubeguard.runtime import Runtime
    from kubeguard.server.run import start_server

    class Allow:
        async def handle(self, request: Request) -> Response:
            return allowed()

    async def main() -> None:
        settings = Settings(bind_address="127.0.0.1", port=0, cert_dir=cert_dir)
        runtime = Runtime(settings)
        spec = HandlerSpec("allow", "/validate", "validating", Allow())
        webhooks = group_webhooks([spec], AdmissionMetrics(runtime.registry))
        server = await start_server(runtime, webhooks, settings)
        print(server.port, flush=True)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await server.stop()

    setup_logging("json", log_level)
    run_async(main())


# --- a lean load generator -----------------------------------------------------------------------


class Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def call(self, request: bytes) -> int:
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        match = re.search(rb"content-length: *(\d+)", head, re.IGNORECASE)
        if match is None:
            raise RuntimeError("response without content-length")
        await self.reader.readexactly(int(match.group(1)))
        return status


async def _connect(port: int, ctx: ssl.SSLContext, n: int) -> list[Conn]:
    conns = []
    for _ in range(n):
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
        conns.append(Conn(reader, writer))
    return conns


def _http_request(port: int, body: bytes) -> bytes:
    return (
        f"POST /validate?timeout=5s HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Accept: application/json, */*\r\nUser-Agent: kube-apiserver-admission\r\n\r\n"
    ).encode() + body


async def fixed_rate(
    port: int, ca: Path, body: bytes, rate: float, seconds: float
) -> dict[str, float]:
    ctx = ssl.create_default_context(cafile=str(ca))
    conns = await _connect(port, ctx, 16)
    idle: asyncio.Queue[Conn] = asyncio.Queue()
    for c in conns:
        idle.put_nowait(c)
    request = _http_request(port, body)
    latencies: list[float] = []
    errors = 0

    async def one(conn: Conn, scheduled: float) -> None:
        nonlocal errors
        try:
            status = await conn.call(request)
            if status != 200:
                errors += 1
        except Exception:
            errors += 1
        latencies.append(time.perf_counter() - scheduled)
        idle.put_nowait(conn)

    total = int(rate * seconds)
    tasks = []
    start = time.perf_counter() + 0.05
    for i in range(total):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        conn = await idle.get()
        tasks.append(asyncio.create_task(one(conn, scheduled)))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    for c in conns:
        c.writer.close()
    return _summary(latencies, elapsed, errors)


async def closed_loop(
    port: int, ca: Path, body: bytes, seconds: float, connections: int = 32
) -> dict[str, float]:
    ctx = ssl.create_default_context(cafile=str(ca))
    conns = await _connect(port, ctx, connections)
    request = _http_request(port, body)
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def loop(conn: Conn) -> None:
        nonlocal errors
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            try:
                if await conn.call(request) != 200:
                    errors += 1
            except Exception:
                errors += 1
                return
            latencies.append(time.perf_counter() - t0)

    start = time.perf_counter()
    await asyncio.gather(*(loop(c) for c in conns))
    elapsed = time.perf_counter() - start
    for c in conns:
        c.writer.close()
    return _summary(latencies, elapsed, errors)


def _summary(latencies: list[float], elapsed: float, errors: int) -> dict[str, float]:
    latencies.sort()
    n = len(latencies)
    return {
        "requests": n,
        "errors": errors,
        "rps": n / elapsed,
        "p50_ms": latencies[n // 2] * 1000 if n else 0.0,
        "p99_ms": latencies[min(n - 1, int(n * 0.99))] * 1000 if n else 0.0,
        "max_ms": latencies[-1] * 1000 if n else 0.0,
        "mean_ms": statistics.fmean(latencies) * 1000 if n else 0.0,
    }


def load(args: argparse.Namespace) -> None:
    """Child process: one load run, prints its summary as JSON."""
    body = Path(args.body).read_bytes()
    if args.mode == "fixed":
        result = asyncio.run(fixed_rate(args.port, Path(args.ca), body, args.rate, args.seconds))
    else:
        result = asyncio.run(closed_loop(args.port, Path(args.ca), body, args.seconds))
    print(json.dumps(result), flush=True)


# --- wrk -----------------------------------------------------------------------------------------

WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = assert(io.open(os.getenv("KG_BODY"), "rb"))
wrk.body = f:read("*a")
f:close()
"""


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def _percentile(out: str, pct: str) -> float:
    # Anchored: "77.50%" in the thread-stats table must not match "50%".
    match = re.search(rf"^\s+{pct}%\s+(\S+)$", out, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"cannot read the {pct}% latency from wrk's output:\n{out}")
    return _ms(match.group(1))


def run_wrk(
    port: int, body_file: Path, script: Path, seconds: float, pin: list[str]
) -> dict[str, float]:
    cmd = [
        *pin,
        "wrk",
        "-t1",
        "-c32",
        f"-d{int(seconds)}s",
        "--latency",
        "-s",
        str(script),
        f"https://127.0.0.1:{port}/validate?timeout=5s",
    ]
    out = subprocess.run(
        cmd, env={**os.environ, "KG_BODY": str(body_file)}, capture_output=True, text=True
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    p50 = _percentile(out, "50")
    p99 = _percentile(out, "99")
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errs = re.search(r"Socket errors: (.*)", out)
    return {
        "requests": requests,
        "rps": rps,
        "p50_ms": p50,
        "p99_ms": p99,
        "errors": int(bad.group(1)) if bad else 0,
        "socket_errors": errs.group(1) if errs else "none",  # type: ignore[dict-item]
    }


# --- driver --------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--log-level", default="info", help="server log level (info logs each)")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--load", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--ca", help=argparse.SUPPRESS)
    parser.add_argument("--body", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(Path(args.serve), args.log_level)
        return
    if args.load:
        load(args)
        return

    from kubeguard.certs import generate_ca, generate_serving, write_cert_dir

    cpus = os.cpu_count() or 1
    taskset = shutil.which("taskset") if cpus >= 2 else None
    pin_server = [taskset, "-c", "0"] if taskset else []
    pin_load = [taskset, "-c", "1"] if taskset else []
    have_wrk = shutil.which("wrk") is not None

    with tempfile.TemporaryDirectory(prefix="kg-bench-") as tmp:
        work = Path(tmp)
        ca = generate_ca()
        write_cert_dir(work / "certs", ca, generate_serving(ca, ip_addresses=["127.0.0.1"]))
        script = work / "post.lua"
        script.write_text(WRK_SCRIPT)
        payloads = build_payloads()
        log_file = work / "server.log"
        with log_file.open("wb") as log_out:
            server = subprocess.Popen(
                [
                    *pin_server,
                    sys.executable,
                    __file__,
                    "--serve",
                    str(work / "certs"),
                    "--log-level",
                    args.log_level,
                ],
                stdout=subprocess.PIPE,
                stderr=log_out,
                text=True,
            )
            try:
                assert server.stdout is not None
                port = int(server.stdout.readline())
                print(
                    f"kubeguard admission server: 1 process, uvloop + httptools, TLS, "
                    f"decision log level {args.log_level}; {cpus} CPUs"
                    + (", server on CPU 0, load on CPU 1" if taskset else "")
                )
                print(
                    f"{'payload':<20} {'load':<30} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} "
                    f"{'srv CPU us/req':>14}  err"
                )
                for name, body in payloads.items():
                    body_file = work / f"{name.split()[1].lower()}.json"
                    body_file.write_bytes(body)
                    label = f"{name} ({len(body) / 1024:.1f} KB)"
                    # Warm-up (connections, caches).
                    _load(pin_load, "closed", port, work, body_file, 1.0, args.rate)
                    cpu = _cpu_seconds(server.pid)
                    fixed = _load(pin_load, "fixed", port, work, body_file, args.seconds, args.rate)
                    fixed["cpu"] = _cpu_seconds(server.pid) - cpu
                    _print(label, f"fixed {args.rate:.0f} req/s (asyncio)", fixed)
                    cpu = _cpu_seconds(server.pid)
                    if have_wrk:
                        sat = run_wrk(port, body_file, script, args.seconds, pin_load)
                        load_name = "saturation (wrk, 32 conns)"
                    else:
                        sat = _load(pin_load, "closed", port, work, body_file, args.seconds, 0)
                        load_name = "saturation (asyncio, 32 conns)"
                    sat["cpu"] = _cpu_seconds(server.pid) - cpu
                    _print(label, load_name, sat)
            finally:
                server.send_signal(signal.SIGTERM)
                try:
                    server.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    server.kill()
        lines = sum(1 for _ in log_file.open("rb"))
        print(f"server wrote {lines} log lines; exit code {server.returncode}")
        print(
            "srv CPU us/req: server process CPU time per request (from /proc), which unlike req/s"
            " hardly depends on what else runs on the machine; 1e6 / it = req/s one core sustains."
        )


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds (Linux)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _load(
    pin: list[str], mode: str, port: int, work: Path, body: Path, seconds: float, rate: float
) -> dict[str, Any]:
    cmd = [
        *pin,
        sys.executable,
        __file__,
        "--load",
        "--mode",
        mode,
        "--port",
        str(port),
        "--ca",
        str(work / "certs" / "ca.crt"),
        "--body",
        str(body),
        "--seconds",
        str(seconds),
        "--rate",
        str(rate),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def _print(label: str, load: str, r: dict[str, Any]) -> None:
    errors = r.get("errors", 0)
    sock = r.get("socket_errors")
    err = f"{errors}" + (f" ({sock})" if sock and sock != "none" else "")
    per_request = r["cpu"] / r["requests"] * 1e6 if r.get("requests") else float("nan")
    print(
        f"{label:<20} {load:<30} {r['rps']:>7.0f} {r['p50_ms']:>7.2f} {r['p99_ms']:>7.2f} "
        f"{per_request:>14.0f}  {err}"
    )


if __name__ == "__main__":
    main()
