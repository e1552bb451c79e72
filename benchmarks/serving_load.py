"""Load test of the seller's endpoint on loopback: single-image requests, fixed count, bounded time.

    python benchmarks/serving_load.py --record runs/serving/copies --seconds 10 --concurrency 8

Starts `advforensics serve` (one process, a fresh SQLite log in a temp folder, synchronous=FULL) and
sends single-image requests (a random image in [0, 1] of the record's shape) over --concurrency
keep-alive connections, for --seconds (and at most --max-requests, with the python client), then prints requests/s and latency percentiles as a Markdown
table, and checks that the log holds one row per answered request.

The load comes from wrk (`apt-get install wrk`, a C load generator): a Python client (httpx) tops out
near 300 requests/s on one core here, below the server. Without wrk, --client python measures with
httpx (slower; its figure is the client's bound, not the server's).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import orjson

from advforensics.serving.keys import BuyerKeys, write_keys
from advforensics.serving.local import LocalServer
from advforensics.serving.querylog import QueryLog
from advforensics.tracing.record import read_record


async def _python_load(url: str, key: str, body: bytes, seconds: float, concurrency: int,
                       max_requests: int | None = None) -> tuple[int, list[float]]:
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    deadline = time.perf_counter() + seconds

    async def worker(client: httpx.AsyncClient) -> None:
        while time.perf_counter() < deadline and (max_requests is None or len(latencies) < max_requests):
            start = time.perf_counter()
            response = await client.post(f"{url}/v1/labels", content=body, headers=headers)
            latencies.append(time.perf_counter() - start)
            answer = response.json()
            if response.status_code != 200 or set(answer) != {"labels"} or len(answer["labels"]) != 1:
                raise RuntimeError(f"bad answer {response.status_code}: {answer}")

    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return len(latencies), latencies


WRK_SCRIPT = """
wrk.method = "POST"
local f = io.open("{body}", "rb")
wrk.body = f:read("*all")
f:close()
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {key}"
done = function(summary, latency, requests)
  io.write(string.format("RESULT %d %d %d %f %f %f %f\\n", summary.requests, summary.errors.status,
      summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
      summary.duration / 1e6, latency:percentile(50) / 1e3, latency:percentile(99) / 1e3, latency.max / 1e3))
end
"""


def _wrk_load(url: str, key: str, body: bytes, seconds: float, concurrency: int, tmp: Path) -> dict[str, float]:
    (tmp / "body.json").write_bytes(body)
    (tmp / "post.lua").write_text(WRK_SCRIPT.replace("{body}", str(tmp / "body.json")).replace("{key}", key))
    out = subprocess.run(["wrk", "-t1", f"-c{concurrency}", f"-d{int(seconds)}s", "-s", str(tmp / "post.lua"),
                          f"{url}/v1/labels"], capture_output=True, text=True, check=True).stdout
    fields = next(line for line in out.splitlines() if line.startswith("RESULT")).split()[1:]
    requests, bad_status, socket_errors = (int(v) for v in fields[:3])
    duration, p50, p99, most = (float(v) for v in fields[3:])
    if bad_status or socket_errors:
        raise RuntimeError(f"wrk saw {bad_status} non-2xx answers and {socket_errors} socket errors")
    return {"requests": requests, "requests_per_s": requests / duration, "p50_ms": p50, "p99_ms": p99, "max_ms": most}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--record", type=Path, required=True)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--client", choices=["wrk", "python"], default="wrk" if shutil.which("wrk") else "python")
    parser.add_argument("--max-requests", type=int, default=None, help="python client: stop after this many too")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    record = read_record(args.record, warn=False)
    image = np.random.default_rng(args.seed).random((1, *record.input_shape), dtype=np.float32)
    body = orjson.dumps({"images": image}, option=orjson.OPT_SERIALIZE_NUMPY)
    with tempfile.TemporaryDirectory() as tmp:
        keys, key = BuyerKeys().add("load", 0, record)
        write_keys(Path(tmp) / "keys.json", keys)
        log = Path(tmp) / "queries.sqlite"
        server = LocalServer(args.record, Path(tmp) / "keys.json", log, "--rate-limit", "1000000/second").start()
        url = server.url
        try:
            asyncio.run(_python_load(url, key, body, 1.0, 2))  # warm-up
            warm = QueryLog(log, create=False).count()
            if args.client == "wrk":
                row = _wrk_load(url, key, body, args.seconds, args.concurrency, Path(tmp))
            else:
                start = time.perf_counter()
                count, latencies = asyncio.run(_python_load(url, key, body, args.seconds, args.concurrency,
                                                            args.max_requests))
                ms = np.array(latencies) * 1000
                row = {"requests": count, "requests_per_s": count / (time.perf_counter() - start),
                       "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
                       "max_ms": float(ms.max())}
        finally:
            server.stop()
        logged = QueryLog(log, create=False).count() - warm
    row.update(client=args.client, concurrency=args.concurrency, seconds=args.seconds, logged=logged)
    print("| client | concurrency | seconds | requests | requests/s | p50 ms | p99 ms | max ms | logged |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    print(f"| {args.client} | {args.concurrency} | {args.seconds:g} | {row['requests']} | {row['requests_per_s']:.0f} | "
          f"{row['p50_ms']:.1f} | {row['p99_ms']:.1f} | {row['max_ms']:.1f} | {logged} |")
    if args.json:
        args.json.write_text(json.dumps(row, indent=2))
    if logged < row["requests"]:  # wrk may count fewer than sent (requests in flight at the end)
        sys.exit("the log does not hold every answered request")


if __name__ == "__main__":
    main()
