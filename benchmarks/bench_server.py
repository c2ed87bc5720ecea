"""The web app's cost: a job through the API against the same run in-process, and 20 clients at once.

A ``clinisynth serve`` subprocess (``--profile``, its own output dir) is started and waited for by polling
``/api/health``; the run's models are loaded in both processes before anything is timed.

- overhead: ``--repeat`` pairs, alternated, of ``clinisynth.generate(TEXT, n=N, steps=S)`` in this process and the
  same job through the API (``POST /api/jobs``, then its SSE stream read to ``end``), from the call to the last
  image filed; the medians compared. On a loaded machine the pairs differ by more than the API costs, so the
  API's own share is also taken inside each job: its wall time minus the worker's run (``started_at`` to
  ``finished_at``), i.e. submit, queueing, event delivery and the final status.
- load: one more job through the API while ``--clients`` clients (half polling ``GET /api/jobs/{id}`` and
  ``GET /api/runs`` in a loop, half following ``/api/jobs/{id}/events``) hit the server; errors (any non-2xx or
  transport error) and the latency of each SSE event (arrival here minus the server's ``time`` of the event).

    python benchmarks/bench_server.py [--n 4] [--steps 20] [--repeat 3] [--clients 20] [--profile tiny]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from _common import machine, percentile

TEXT = "moderate right pleural effusion, PA chest radiograph"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(*, out: Path, profile: str, port: int) -> subprocess.Popen:
    import httpx

    server = subprocess.Popen([sys.executable, "-m", "clinisynth.cli.main", "serve", "--out", str(out), "--profile",
                               profile, "--port", str(port), "--max-jobs-per-token", "100"],
                              env={**os.environ, "PYTHONSAFEPATH": "1"}, cwd=out.parent)
    deadline = time.monotonic() + 600
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=5).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("the server did not start")
        time.sleep(0.2)


def api_job(base: str, body: dict) -> tuple[float, dict]:
    """Seconds from POST /api/jobs to its SSE ``end`` event, and the job's status."""
    import httpx

    started = time.perf_counter()
    job = httpx.post(f"{base}/api/jobs", json=body, timeout=60).json()
    with httpx.stream("GET", f"{base}/api/jobs/{job['id']}/events", timeout=None) as stream:
        for line in stream.iter_lines():
            if line.startswith("event: end"):
                break
    elapsed = time.perf_counter() - started
    return elapsed, httpx.get(f"{base}/api/jobs/{job['id']}", timeout=60).json()


async def load(base: str, body: dict, clients: int) -> dict:
    import httpx

    errors, latencies, requests = [], [], [0]
    async with httpx.AsyncClient(base_url=base, timeout=None, limits=httpx.Limits(max_connections=clients + 4)) as client:
        job = (await client.post("/api/jobs", json=body)).json()
        done = asyncio.Event()

        async def poller() -> None:
            while not done.is_set():
                for path in (f"/api/jobs/{job['id']}", "/api/runs"):
                    try:
                        answer = await client.get(path)
                        requests[0] += 1
                        if answer.status_code != 200:
                            errors.append(f"{path}: {answer.status_code}")
                        elif path.startswith("/api/jobs/") and answer.json()["status"] not in ("queued", "running"):
                            done.set()
                    except httpx.HTTPError as error:
                        errors.append(f"{path}: {error!r}")

        async def streamer() -> None:
            try:
                async with client.stream("GET", f"/api/jobs/{job['id']}/events") as stream:
                    requests[0] += 1
                    if stream.status_code != 200:
                        errors.append(f"events: {stream.status_code}")
                        return
                    name = None
                    async for line in stream.aiter_lines():
                        if line.startswith("event: "):
                            name = line[7:]
                        elif line.startswith("data: "):
                            data = json.loads(line[6:])
                            if name not in ("status",):  # replayed history would count as latency; live ones only
                                latencies.append(time.time() - data["time"])
                            if name == "end":
                                done.set()
                                return
            except httpx.HTTPError as error:
                errors.append(f"events: {error!r}")

        pollers = clients // 2
        await asyncio.gather(*[poller() for _ in range(pollers)], *[streamer() for _ in range(clients - pollers)])
    return {"errors": errors, "latencies": latencies, "requests": requests[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--profile", default="tiny")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from clinisynth import api
    from clinisynth.settings import Settings

    settings = Settings(profile=args.profile)
    work = Path(tempfile.mkdtemp(prefix="bench-server-"))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = start_server(out=work / "served", profile=args.profile, port=port)
    body = {"text": TEXT, "n": args.n, "steps": args.steps}
    try:
        # Warm both processes: models, index, LangGraph, the first diffusion call.
        api.generate(TEXT, out=work / "local", n=1, steps=args.steps, settings=settings, profile=args.profile)
        api_job(base, {**body, "n": 1})
        local, served, layer = [], [], []
        for repeat in range(args.repeat):
            started = time.perf_counter()
            result = api.generate(TEXT, out=work / "local", n=args.n, steps=args.steps, seed=repeat + 1,
                                  settings=settings, profile=args.profile)
            local.append(time.perf_counter() - started)
            elapsed, job = api_job(base, {**body, "seed": repeat + 1})
            served.append(elapsed)
            inside = (datetime.fromisoformat(job["finished_at"]) - datetime.fromisoformat(job["started_at"])).total_seconds()
            layer.append(elapsed - inside)
            print(f"repeat {repeat}: in-process {local[-1]:.2f} s ({result.status}), API {elapsed:.2f} s "
                  f"({job['status']}; the run itself {inside:.2f} s, the API around it {elapsed - inside:.3f} s)",
                  flush=True)
        stress = asyncio.run(load(base, {**body, "seed": 99}, args.clients))
    finally:
        server.terminate()
        server.wait(timeout=60)
    in_process, through_api = statistics.median(local), statistics.median(served)
    latencies = stress["latencies"]
    print(f"\nmachine: {machine()}, load average {os.getloadavg()[0]:.1f}")
    print(f"{args.n} images x {args.steps} steps on {args.profile}, median of {args.repeat}: in-process "
          f"{in_process:.2f} s, through the API {through_api:.2f} s, overhead {100 * (through_api / in_process - 1):+.1f}%")
    print(f"the API around the run (submit, queue, events; the job's wall time minus the worker's run), median: "
          f"{statistics.median(layer):.3f} s = {100 * statistics.median(layer) / through_api:.2f}% of the job")
    print(f"{args.clients} clients during one job: {stress['requests']} requests, {len(stress['errors'])} errors, "
          f"{len(latencies)} events, latency p50 {1000 * percentile(latencies, 50):.1f} ms, "
          f"p95 {1000 * percentile(latencies, 95):.1f} ms, max {1000 * max(latencies):.1f} ms")
    for error in stress["errors"][:5]:
        print("  error:", error)


if __name__ == "__main__":
    main()
