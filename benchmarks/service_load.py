"""A bounded concurrent load on the real service over loopback: latency, errors, peak memory.

    python benchmarks/service_load.py [--model artifacts/model] [--light 32] [--heavy 4] [--depth 200]
                                      [--light-method simple_gradient]

Starts ``influence serve`` (uvicorn + its own local Ray workers) on the demo's artifacts, waits until
``/readyz`` answers, then sends ``--light`` one-sentence requests and ``--heavy`` influence requests all at
once, twice: with client retries off (what the server answers under the burst: 200 or 429, never an error)
and with retries on (honouring Retry-After: everything completes). Light requests are ``/v1/saliency``
with ``--light-method`` (vanilla gradient by default: one sentence, one forward and backward pass on a
worker); ``--light-method predict`` sends ``/v1/predict`` instead. Memory is the peak resident size
summed over the server's process tree (the API process and the Ray processes it started), sampled every
0.2 s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import write_result
from clients import AsyncInfluenceClient, InfluenceAPIError
from interpret.data import load_examples, sst2_spec

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def tree_rss_bytes(root: int) -> int:
    """Resident bytes of ``root`` and all its descendants (the API process, Ray's raylet, its workers)."""
    return sum(process_tree_rss(root).values())


def process_tree_rss(root: int) -> dict[int, int]:
    """Resident bytes of ``root`` and each of its descendants, by pid."""
    parents, rss = {}, {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry.name)] = int(fields[1])  # ppid: the 4th field; [0] is the state after the name
        rss[int(entry.name)] = int(fields[21]) * PAGE_SIZE  # rss in pages: the 24th field
    tree, frontier = {root}, [root]
    while frontier:
        children = [pid for pid, parent in parents.items() if parent in frontier and pid not in tree]
        tree.update(children)
        frontier = children
    return {pid: rss.get(pid, 0) for pid in tree}


class PeakMemory(threading.Thread):
    def __init__(self, group: int):
        super().__init__(daemon=True)
        self.group, self.peak, self.running = group, 0, True

    def run(self) -> None:
        while self.running:
            self.peak = max(self.peak, tree_rss_bytes(self.group))
            time.sleep(0.2)


def start_server(args, port: int, log: Path) -> subprocess.Popen:
    command = [str(Path(sys.executable).with_name("influence")), "serve", "--model", str(args.model)]
    command += ["--index", str(args.index), "--port", str(port), "--workers", str(args.workers)]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "INFLUENCE_MAX_IN_FLIGHT": str(args.max_in_flight)}
    return subprocess.Popen(
        command, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True
    )


def wait_ready(url: str, process: subprocess.Popen, timeout: float = 600.0) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if process.poll() is not None:
            raise SystemExit("the service exited during startup; see its log")
        try:
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                return time.monotonic() - start
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise SystemExit("the service did not become ready")


async def timed(call) -> tuple[float, str, str | None]:
    """(seconds, outcome, message): the message of any answer that is neither a success nor a 429."""
    start = time.perf_counter()
    message = None
    try:
        await call
        outcome = "200"
    except InfluenceAPIError as error:
        outcome = str(error.status)
        message = None if error.status == 429 else str(error)
    except httpx.HTTPError as error:
        outcome, message = type(error).__name__, f"{type(error).__name__}: {error}"
    return time.perf_counter() - start, outcome, message


async def burst(url: str, texts: list[str], args, retries: int) -> dict:
    lissa = {"recursion_depth": args.depth}
    async with AsyncInfluenceClient(url, max_retries=retries, timeout=1800) as client:
        heavy = [timed(client.influence(texts[i], k=1000, top=10, lissa=lissa)) for i in range(args.heavy)]
        light_texts = [texts[i % len(texts)] for i in range(args.light)]
        light = [timed(light_call(client, text, args.light_method)) for text in light_texts]
        start = time.perf_counter()
        results = await asyncio.gather(*heavy, *light)  # influence first: they take the in-flight slots
        wall = time.perf_counter() - start
    return {
        "heavy": summarize(results[: args.heavy]),
        "light": summarize(results[args.heavy :]),
        "wall_seconds": wall,
    }


def light_call(client: AsyncInfluenceClient, text: str, method: str):
    return client.predict(text) if method == "predict" else client.saliency(text, method=method)


def summarize(results: list[tuple[float, str, str | None]]) -> dict:
    outcomes = Counter(outcome for _, outcome, _ in results)
    ok = [seconds for seconds, outcome, _ in results if outcome == "200"]
    return {
        "count": len(results),
        "outcomes": dict(outcomes),
        "errors_other_than_429": sum(n for outcome, n in outcomes.items() if outcome not in ("200", "429")),
        "error_messages": sorted({message for _, _, message in results if message}),
        "p50_seconds": float(np.percentile(ok, 50)) if ok else None,
        "p95_seconds": float(np.percentile(ok, 95)) if ok else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("artifacts/model"))
    parser.add_argument("--index", type=Path, default=Path("artifacts/index"))
    parser.add_argument("--light", type=int, default=32)
    parser.add_argument("--heavy", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--depth", type=int, default=200, help="LiSSA recursion depth of heavy requests")
    parser.add_argument(
        "--light-method", default="simple_gradient", help="saliency method of light requests, or 'predict'"
    )
    parser.add_argument("--max-in-flight", type=int, default=8)
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()

    texts = load_examples(sst2_spec("dev")).texts[:64]
    url = f"http://127.0.0.1:{args.port}"
    log = Path("benchmarks/results/service_load.log")
    process = start_server(args, args.port, log)
    memory = PeakMemory(process.pid)
    memory.start()
    try:
        startup = wait_ready(url, process)
        idle = tree_rss_bytes(process.pid)
        no_retries = asyncio.run(burst(url, texts, args, retries=0))
        with_retries = asyncio.run(burst(url, texts, args, retries=20))
    finally:
        memory.running = False
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(60)
    errors = sum(
        burst[kind]["errors_other_than_429"]
        for burst in (no_retries, with_retries)
        for kind in ("heavy", "light")
    )
    if errors:
        print(f"{errors} request(s) failed; the server's log is kept in {log}", file=sys.stderr)
    else:
        log.unlink(missing_ok=True)
    write_result(
        "service_load",
        {
            "model": str(args.model),
            "workers": args.workers,
            "max_in_flight": args.max_in_flight,
            "heavy_request": {"k": 1000, "top": 10, "lissa_recursion_depth": args.depth},
            "light_request": (
                "POST /v1/predict, one sentence"
                if args.light_method == "predict"
                else f"POST /v1/saliency method={args.light_method}, one sentence"
            ),
            "startup_seconds": startup,
            "burst_without_client_retries": no_retries,
            "burst_with_client_retries": with_retries,
            "idle_rss_mib": idle / 2**20,
            "peak_rss_mib": memory.peak / 2**20,
        },
    )


if __name__ == "__main__":
    main()
