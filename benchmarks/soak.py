"""A bounded soak of the real service on loopback: mixed hostile and heavy traffic for a fixed time.

    python benchmarks/soak.py [--minutes 10] [--model artifacts/soak/model] [--deadline 60]

Starts ``influence serve`` (uvicorn + its own local Ray workers) with a shortened deadline, waits until
``/readyz`` answers, then runs these clients at once until the time is up:

* repeats: an influence query, then refinements of it (new ``top``) sent after the first query's
  deadline has passed (the cached ``s_test`` must be reused, never time out);
* disconnects: slow influence queries whose client gives up after 2 s (the work must be cancelled);
* job floods: jobs submitted until 429, then listed, fetched and cancelled;
* oversized bodies (2 MB, by Content-Length and chunked) and slow bodies (shorter than their length);
* light traffic: predictions and saliency maps;
* a prober: ``/healthz`` every 0.2 s;
* evaluate-job churn (one client): a recall or audit job submitted, DELETEd once it runs, resubmitted;
  every DELETEd job must end ``cancelled`` within 10 s, and no file of it may be left half-written;
* a fairness probe (another client): a cheap interactive job every 2 s, its wait in the queue measured
  while the heavy jobs and the job floods run.

The churn and the probe are told apart from the rest by ``X-Forwarded-For`` (the server trusts it from
loopback only), as separate clients behind a proxy would be.

Reports every status code seen, the 5xx count, workers the pool replaced (``/metrics``), the ``/healthz``
latency percentiles, and the resident memory of the server's process tree after a warm-up (a round of
every kind of traffic, the ``s_test`` cache filled to its bound) and after the traffic (each after a quiet
period). When no model is given, MiniLM is fine-tuned on 2,000 SST-2 rows and
indexed once into ``artifacts/soak/`` (about 2 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import signal
import socket
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
from benchmarks.service_load import process_tree_rss, tree_rss_bytes, wait_ready
from interpret.concurrency import HEAP_TRIM_INTERVAL_S
from interpret.data import load_examples, sst2_spec

SOAK = Path("artifacts/soak")
CACHE_ENTRIES = 8
"""The server's s_test cache bound in the soak (each entry pins 15 MB of MiniLM vectors in Ray's object
store); the warm-up fills it, so a full cache is part of the starting memory."""
INFLUENCE = str(Path(sys.executable).with_name("influence"))
HEAVY_CLIENT, PROBE_CLIENT = "198.51.100.1", "198.51.100.2"
"""The churn's and the probe's addresses (X-Forwarded-For, trusted from loopback)."""
CANCEL_WITHIN_S = 10.0
SETTLE_S = 2 * HEAP_TRIM_INTERVAL_S
"""The quiet period before a memory reading: samples are taken over its second half, after at least one
heap trim of every process (an audit's freed gigabyte stays resident until the API process trims)."""


def percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def orphan_files(scratch: Path, served: list[Path]) -> list[str]:
    """Files a cancelled job left half-written: temporary files in the scratch folder, and anything an
    evaluate job wrote beside the served indexes (their folders' siblings other than the indexes)."""
    partial = [str(path) for path in scratch.rglob("tmp*")] if scratch.exists() else []
    beside = {path for folder in served for path in folder.parent.iterdir()} - set(served)
    return partial + [str(path) for path in beside if "audit" in path.name or path.name.endswith(".shards")]


def prepare_model(rows: int) -> tuple[Path, Path]:
    """A MiniLM fine-tuned on ``rows`` SST-2 rows and its index, built once."""
    model, index = SOAK / "model", SOAK / "index"
    if not (model / "card.json").is_file():
        subprocess.run([INFLUENCE, "train", "--out", str(model), "--max-examples", str(rows)], check=True)
    if not (index / "manifest.json").is_file():
        subprocess.run([INFLUENCE, "index", "build", "--model", str(model), "--out", str(index)], check=True)
    return model, index


class Tally:
    """Statuses of every request, thread-safe."""

    def __init__(self):
        self.lock, self.statuses, self.notes = threading.Lock(), Counter(), Counter()

    def add(self, status: int | str, note: str | None = None) -> None:
        with self.lock:
            self.statuses[str(status)] += 1
            if note:
                self.notes[note] += 1


class Soak:
    def __init__(self, url: str, port: int, until: float, tally: Tally, texts: list[str], deadline: float):
        self.url, self.port, self.until, self.tally, self.texts = url, port, until, tally, texts
        self.deadline, self.healthz_ms = deadline, []
        self.cancels: list[tuple[str | None, float]] = []  # (state after DELETE, seconds to reach it)
        self.probe_waits: list[float] = []

    def running(self) -> bool:
        return time.monotonic() < self.until

    def post(self, client: httpx.Client, path: str, **kwargs) -> httpx.Response | None:
        try:
            response = client.post(f"{self.url}{path}", **kwargs)
        except httpx.TimeoutException:
            self.tally.add("client_timeout")
            return None
        self.tally.add(response.status_code)
        return response

    def repeats(self) -> None:
        with httpx.Client(timeout=300) as client:
            while self.running():
                text = random.choice(self.texts)
                body = {"inputs": [{"text": text}], "k": 200, "top": 3, "lissa": {"recursion_depth": 100}}
                first = self.post(client, "/v1/influence", json=body)
                started = time.monotonic()
                while self.running() and time.monotonic() - started < self.deadline + 2:
                    time.sleep(0.5)  # the condition under test: the first request's deadline has passed
                refined = self.post(client, "/v1/influence", json={**body, "top": 5})
                if first is not None and refined is not None and refined.status_code == 200:
                    self.tally.add("refined_after_deadline", "refined_after_deadline_ok")

    def disconnects(self) -> None:
        body = {"inputs": [{"text": "stale probe"}], "k": 100, "lissa": {"recursion_depth": 3000}}
        with httpx.Client(timeout=2.0) as client:
            while self.running():
                self.post(client, "/v1/influence", json=body)
                time.sleep(3)

    def job_floods(self) -> None:
        job = {"kind": "influence", "influence": {"inputs": [{"text": "a flood"}], "k": 50}}
        job["influence"]["lissa"] = {"recursion_depth": 20}
        with httpx.Client(timeout=30) as client:
            while self.running():
                ids = []
                for _ in range(15):
                    response = self.post(client, "/v1/jobs", json=job)
                    if response is None or response.status_code != 202:
                        if response is not None and response.status_code == 429:
                            self.tally.add("flood_refused", "retry_after=" + response.headers["Retry-After"])
                        break
                    ids.append(response.json()["id"])
                listed = client.get(f"{self.url}/v1/jobs")
                self.tally.add(listed.status_code)
                for position, job_id in enumerate(ids):
                    verb = client.delete if position % 2 else client.get
                    self.tally.add(verb(f"{self.url}/v1/jobs/{job_id}").status_code)
                time.sleep(2)

    def bad_bodies(self) -> None:
        huge = b"x" * 2_000_000
        with httpx.Client(timeout=30) as client:
            while self.running():
                self.post(client, "/v1/predict", content=huge, headers={"content-type": "application/json"})
                chunks = (huge[i : i + 65536] for i in range(0, len(huge), 65536))
                self.post(client, "/v1/predict", content=chunks, headers={"content-type": "application/json"})
                self.slow_body()
                time.sleep(1)

    def slow_body(self) -> None:
        head = b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=60) as connection:
                connection.sendall(head + b"Content-Length: 500\r\n\r\n" + b'{"inputs"')
                answer = connection.recv(4096)
            self.tally.add(answer.split(b" ", 2)[1].decode() if answer else "closed")
        except OSError:
            self.tally.add("slow_body_error")

    def light(self) -> None:
        with httpx.Client(timeout=120) as client:
            while self.running():
                text = random.choice(self.texts)
                self.post(client, "/v1/predict", json={"inputs": [{"text": text}]})
                self.post(client, "/v1/saliency", json={"text": text, "method": "simple_gradient"})

    def evaluate_churn(self) -> None:
        """Heavy jobs of one client, each DELETEd at a random point of its run, then resubmitted."""
        inputs = [{"text": text, "label": 1} for text in self.texts[:4]]
        jobs = [
            {"kind": "evaluate", "evaluate": {"task": "recall", "inputs": inputs, "methods": ["fastif"]}},
            {"kind": "evaluate", "evaluate": {"task": "audit"}},
        ]
        with httpx.Client(timeout=30, headers={"X-Forwarded-For": HEAVY_CLIENT}) as client:
            for number in itertools.count():
                if not self.running():
                    return
                response = self.post(client, "/v1/jobs", json=jobs[number % 2])
                if response is None or response.status_code != 202:
                    time.sleep(1)
                    continue
                job_id = response.json()["id"]
                if not self._wait_state(client, job_id, lambda state: state != "queued", 120):
                    continue
                time.sleep(random.uniform(2, 10))
                deleted = time.monotonic()
                response = client.delete(f"{self.url}/v1/jobs/{job_id}")
                self.tally.add(response.status_code)
                if response.status_code != 200 or response.json()["state"] != "running":
                    continue  # it finished first (a resumed audit): nothing to cancel
                ended = self._wait_state(client, job_id, lambda state: state != "running", 60)
                self.cancels.append((ended, time.monotonic() - deleted))

    def _wait_state(self, client: httpx.Client, job_id: str, done, timeout: float) -> str | None:
        """Poll the job until ``done(state)``; its state then, or ``None`` after ``timeout``."""
        limit = time.monotonic() + timeout
        while time.monotonic() < limit:
            state = client.get(f"{self.url}/v1/jobs", timeout=30).json()["jobs"]
            state = next((job["state"] for job in state if job["id"] == job_id), "gone")
            if done(state):
                return state
            time.sleep(0.1)
        return None

    def fairness_probe(self) -> None:
        """A cheap interactive job every 2 s from another client: seconds from submission to its start."""
        job = {"kind": "saliency", "saliency": {"text": "a probe", "method": "simple_gradient"}}
        with httpx.Client(timeout=30, headers={"X-Forwarded-For": PROBE_CLIENT}) as client:
            while self.running():
                submitted = time.monotonic()
                response = self.post(client, "/v1/jobs", json=job)
                if response is not None and response.status_code == 202:
                    job_id = response.json()["id"]
                    if self._wait_state(client, job_id, lambda state: state != "queued", 300):
                        self.probe_waits.append(time.monotonic() - submitted)
                    client.delete(f"{self.url}/v1/jobs/{job_id}")  # fetch-or-forget: keep the table small
                time.sleep(2)

    def prober(self) -> None:
        with httpx.Client(timeout=30) as client:
            while self.running():
                start = time.perf_counter()
                status = client.get(f"{self.url}/healthz").status_code
                self.healthz_ms.append(1000 * (time.perf_counter() - start))
                self.tally.add(status)
                time.sleep(0.2)


def default_costs(url: str, text: str) -> dict[str, float]:
    """Seconds the heaviest methods take with their default parameters, one at a time on an idle
    service: what the synchronous budget (INFLUENCE_MAX_SYNC_FORWARD_PASSES) is sized for."""
    costs = {}
    for path, body in (
        ("/v1/attack", {"text": text, "method": "triggers"}),
        ("/v1/saliency", {"text": text, "method": "lime"}),
        ("/v1/saliency", {"text": text, "method": "integrated_gradients"}),
    ):
        start = time.perf_counter()
        status = httpx.post(f"{url}{path}", json=body, timeout=600).status_code
        costs[body["method"]] = {"seconds": time.perf_counter() - start, "status": status}
    return costs


def warm_up(soak: Soak, texts: list[str], cache_entries: int) -> None:
    """One round of every kind of traffic, and the ``s_test`` cache filled to its bound, before the
    starting memory is measured: what is measured after is growth, not first-use allocation."""
    with httpx.Client(timeout=300) as client:
        for text in texts[:cache_entries]:
            body = {"inputs": [{"text": text}], "k": 200, "top": 3, "lissa": {"recursion_depth": 100}}
            soak.post(client, "/v1/influence", json=body)
    soak.until = time.monotonic() + 45
    clients = [soak.disconnects, soak.job_floods, soak.bad_bodies, soak.light]
    clients += [soak.evaluate_churn, soak.fairness_probe]  # an audit's first use of the object store
    threads = [threading.Thread(target=client, daemon=True) for client in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def replacements(url: str) -> int:
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        if line.startswith("influence_worker_replacements "):
            return int(float(line.split()[1]))
    raise SystemExit("no influence_worker_replacements in /metrics")


def rss_by_process(root: int) -> dict[str, float]:
    """MiB per process of the server's tree, by command (raylet, gcs_server, ray::InfluenceWorker, ...)."""
    out: dict[str, float] = {}
    for pid, rss in process_tree_rss(root).items():
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        out[f"{command.rsplit('/', 1)[-1][:40]} ({pid})"] = rss / 2**20
    return out


RSS_KINDS = ("RssAnon", "RssFile", "RssShmem")
"""Private heap and stacks; mapped files (libraries, model weights); shared memory (Ray's object store)."""


def rss_kinds(root: int) -> dict[str, dict[str, float]]:
    """MiB of each kind of resident memory, per process of the tree (``/proc/PID/status``)."""
    out: dict[str, dict[str, float]] = {}
    for pid in process_tree_rss(root):
        try:
            status = Path(f"/proc/{pid}/status").read_text().splitlines()
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        values = dict(line.split(":", 1) for line in status if line.startswith(RSS_KINDS))
        name = f"{command.rsplit('/', 1)[-1][:40]} ({pid})"
        out[name] = {kind: int(values[kind].split()[0]) / 1024 for kind in RSS_KINDS if kind in values}
    return out


def kind_totals(per_process: dict[str, dict[str, float]]) -> dict[str, float]:
    return {kind: round(sum(p.get(kind, 0.0) for p in per_process.values()), 1) for kind in RSS_KINDS}


def settled_rss(root: int, seconds: float = 20.0) -> int:
    """The process tree's resident memory after a quiet period (the median of samples over its end)."""
    time.sleep(seconds / 2)
    samples = []
    for _ in range(10):
        samples.append(tree_rss_bytes(root))
        time.sleep(seconds / 20)
    return int(np.median(samples))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--index", type=Path, default=None)
    parser.add_argument("--rows", type=int, default=2000, help="SST-2 rows for the soak model")
    parser.add_argument("--deadline", type=float, default=60.0, help="INFLUENCE_DEADLINE_S of the server")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--port", type=int, default=8766)
    args = parser.parse_args()
    model, index = (args.model, args.index) if args.model else prepare_model(args.rows)
    url = f"http://127.0.0.1:{args.port}"
    log = Path("benchmarks/results/soak.log")
    env = {
        **os.environ,
        "RAY_USAGE_STATS_ENABLED": "0",
        "INFLUENCE_DEADLINE_S": str(args.deadline),
        "INFLUENCE_MAX_JOBS": "30",
        "INFLUENCE_MAX_JOBS_PER_CLIENT": "10",
        "INFLUENCE_FAILED_JOB_TTL_S": "10",
        "INFLUENCE_JOB_TTL_S": "30",
        "INFLUENCE_BODY_TIMEOUT_S": "5",
        "INFLUENCE_S_TEST_CACHE_ENTRIES": str(CACHE_ENTRIES),
        "INFLUENCE_TRUSTED_PROXIES": '["127.0.0.1"]',
        "INFLUENCE_ALLOW_FULL_SCAN": "true",  # the churn's recall jobs compare with a full scan
        "INFLUENCE_GRADIENT_INDEX_DIR": str(SOAK / "gradient-index"),  # not built: lets an audit run
        "INFLUENCE_SCRATCH_DIR": str(SOAK / "scratch"),
    }
    command = [INFLUENCE, "serve", "--model", str(model), "--index", str(index), "--port", str(args.port)]
    command += ["--workers", str(args.workers)]
    process = subprocess.Popen(
        command, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        startup = wait_ready(url, process)
        texts = load_examples(sst2_spec("dev")).texts[:200]
        warm = httpx.post(f"{url}/v1/predict", json={"inputs": [{"text": texts[0]}]}, timeout=120)
        warm.raise_for_status()
        costs = default_costs(url, texts[1])
        warm_up(
            Soak(url, args.port, 0.0, Tally(), texts, args.deadline), texts[-CACHE_ENTRIES:], CACHE_ENTRIES
        )
        rss_start, kills_start = settled_rss(process.pid, SETTLE_S), replacements(url)
        processes_start, kinds_start = rss_by_process(process.pid), rss_kinds(process.pid)
        tally = Tally()
        soak = Soak(url, args.port, time.monotonic() + 60 * args.minutes, tally, texts, args.deadline)
        clients = [soak.repeats, soak.disconnects, soak.job_floods, soak.bad_bodies, soak.light, soak.prober]
        clients += [soak.evaluate_churn, soak.fairness_probe]
        threads = [threading.Thread(target=client, daemon=True) for client in clients]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        kills = replacements(url) - kills_start
        rss_end = settled_rss(process.pid, SETTLE_S)
        processes_end, kinds_end = rss_by_process(process.pid), rss_kinds(process.pid)
        alive = process.poll() is None
        orphans = orphan_files(SOAK / "scratch", [index])
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(60)
    statuses = dict(sorted(tally.statuses.items()))
    server_errors = sum(n for status, n in statuses.items() if status.isdigit() and int(status) >= 500)
    healthz = np.asarray(soak.healthz_ms)
    summary = {
        "requests": sum(n for status, n in statuses.items() if status.isdigit()),
        "status_5xx": server_errors,
        "worker_kills": kills,
        "healthz_p99_ms": float(np.percentile(healthz, 99)),
        "rss_growth_pct": 100.0 * (rss_end - rss_start) / rss_start,
        "jobs_cancelled_cleanly": bool(soak.cancels)
        and all(state == "cancelled" and seconds <= CANCEL_WITHIN_S for state, seconds in soak.cancels),
        "interactive_job_wait_p95_s": percentile(soak.probe_waits, 95),
        "orphan_files": len(orphans),
    }
    write_result(
        "soak",
        {
            "command": "python benchmarks/soak.py " + " ".join(sys.argv[1:]),
            "summary": summary,
            "minutes": args.minutes,
            "model": str(model),
            "workers": args.workers,
            "server_deadline_s": args.deadline,
            "startup_seconds": startup,
            "default_parameters_one_request": costs,
            "statuses": statuses,
            "notes": dict(tally.notes),
            "healthz_ms": {
                "count": len(healthz),
                "p50": float(np.percentile(healthz, 50)),
                "p99": float(np.percentile(healthz, 99)),
                "max": float(healthz.max()),
            },
            "rss_mib": {
                "start": rss_start / 2**20,
                "end": rss_end / 2**20,
                "growth_by_process": {
                    name: round(processes_end[name] - processes_start.get(name, 0.0), 1)
                    for name in sorted(
                        processes_end, key=lambda n: processes_start.get(n, 0) - processes_end[n]
                    )
                },
            },
            "rss_kinds_mib": {
                "start": kind_totals(kinds_start),
                "end": kind_totals(kinds_end),
                "growth_by_process": {
                    name: {k: round(v - kinds_start.get(name, {}).get(k, 0.0), 1) for k, v in kinds.items()}
                    for name, kinds in kinds_end.items()
                },
            },
            "server_alive_at_end": alive,
            "evaluate_churn": {
                "deleted": len(soak.cancels),
                "states_after_delete": dict(Counter(str(state) for state, _ in soak.cancels)),
                "seconds_to_cancelled_max": max((s for _, s in soak.cancels), default=None),
                "orphans": orphans,
            },
            "fairness_probe": {
                "jobs": len(soak.probe_waits),
                "wait_p50_s": percentile(soak.probe_waits, 50),
                "wait_max_s": max(soak.probe_waits, default=None),
            },
        },
    )


if __name__ == "__main__":
    main()
