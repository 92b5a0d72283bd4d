"""The real service: ``influence serve`` (uvicorn + its own local Ray workers) queried by the client."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from clients import InfluenceClient
from engine.pipeline import answer_query, local_engine
from interpret.influence import LissaConfig, QueryConfig
from tests.cluster import free_port, start, stop, wait_ready

pytestmark = pytest.mark.slow  # real servers and Ray: not in the fast tier (pytest -m 'not slow')

QUERY = "the plot was good and fun"
LISSA = {"recursion_depth": 20, "batch_size": 4, "damping": 0.1, "scale": 20.0, "num_repetitions": 2}
KEY = {"X-API-Key": "test-key"}


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log: Path


@contextlib.contextmanager
def _serving(engine_dirs, folder: Path) -> Iterator[Server]:
    """``influence serve`` on the tiny model with two local Ray workers, stopped on exit."""
    port = free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "INFLUENCE_API_KEY": "test-key"}
    env.pop("RAY_ADDRESS", None)
    log = folder / "serve.log"
    command = [str(Path(sys.executable).with_name("influence")), "serve", "--model", str(engine_dirs[0])]
    command += ["--index", str(engine_dirs[1]), "--port", str(port), "--workers", "2"]
    process = start(command, env, log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process, log)
        yield Server(url, process, log)
    finally:
        stop(process)


@pytest.fixture(scope="module")
def server(engine_dirs, tmp_path_factory):
    with _serving(engine_dirs, tmp_path_factory.mktemp("serve")) as running:
        yield running


def test_the_client_queries_a_running_service(server, engine_dirs):
    with InfluenceClient(server.url, api_key="test-key") as client:
        answer = client.influence(QUERY, k=20, top=3, lissa=LISSA).results[0]
        model = client.models().models[0]
    engine = local_engine(engine_dirs[0], index_dir=engine_dirs[1])
    local = answer_query(engine, QUERY, config=QueryConfig(k=20, top=3, lissa=LissaConfig(**LISSA)))
    assert [e.id for e in answer.helpful] == [e.id for e in local.helpful]
    np.testing.assert_allclose([e.score for e in answer.harmful], [e.score for e in local.harmful], rtol=1e-4)
    assert answer.quality.lissa.workers is None  # the service names no worker, node or PID (issue 23)
    assert model.workers == 2 and model.index_manifest["count"] == 96


def test_the_cli_asks_a_running_service_with_url(server):
    lissa = ["--recursion-depth", "20", "--lissa-batch-size", "4", "--scale", "20", "--damping", "0.1"]
    influence = str(Path(sys.executable).with_name("influence"))
    command = [influence, "query", "--url", server.url, "--text", QUERY]
    env = {**os.environ, "INFLUENCE_API_KEY": "test-key"}
    result = subprocess.run(
        [*command, "--k", "15", "--top", "2", *lissa, "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert (
        payload["quality"]["candidates"] == 15
        and payload["quality"]["lissa"]["config"]["recursion_depth"] == 20
    )

    denied = subprocess.run(
        [*command, "--json"],
        env={**env, "INFLUENCE_API_KEY": "wrong"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert denied.returncode == 2 and denied.stderr.strip().splitlines()[-1].startswith(
        "error: 401 unauthorized"
    )


def test_sigterm_lets_the_request_in_flight_finish_and_closes_the_service(engine_dirs, tmp_path):
    """``docker stop`` sends SIGTERM: uvicorn's graceful shutdown (not Ray's driver handler, which exits
    at once) finishes the request in flight, runs the app's shutdown and exits. On a server of its own, so
    no other test depends on running before it."""
    with _serving(engine_dirs, tmp_path) as server:
        _sigterm_mid_request(server)


def _sigterm_mid_request(server: Server) -> None:
    answers = []

    def ask() -> None:
        with InfluenceClient(server.url, api_key="test-key", max_retries=0) as client:
            answers.append(client.influence(QUERY, k=20, top=3, lissa={**LISSA, "recursion_depth": 400}))

    asking = threading.Thread(target=ask)
    asking.start()
    limit = time.monotonic() + 60
    while "influence_in_flight 1.0" not in httpx.get(f"{server.url}/metrics", headers=KEY).text:
        assert time.monotonic() < limit and asking.is_alive(), "the request never started computing"
        time.sleep(0.05)
    server.process.send_signal(signal.SIGTERM)
    asking.join(120)
    assert server.process.wait(60) is not None
    log = server.log.read_text()
    assert len(answers) == 1 and answers[0].results[0].helpful
    assert "Application shutdown complete" in log and "SystemExit" not in log
