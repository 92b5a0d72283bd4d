"""A real two-node Ray cluster (``ray start --head`` + ``ray start --address``) used through RAY_ADDRESS."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from interpret.influence import LissaConfig, QueryConfig
from service.pipeline import LocalEngine

BIN = Path(sys.executable).parent
QUERY = "the plot was good and fun"
STARTED = "Ray runtime started"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_line(log: Path, text: str, process: subprocess.Popen, timeout: float = 90.0) -> None:
    """Poll the process's log until ``text`` appears (a condition, not a fixed sleep)."""
    limit = time.monotonic() + timeout
    while time.monotonic() < limit:
        if text in log.read_text(errors="replace"):
            return
        if process.poll() is not None:
            raise AssertionError(f"{process.args[:3]} exited early:\n{log.read_text()[-2000:]}")
        time.sleep(0.2)
    raise AssertionError(f"no {text!r} in {log} after {timeout:g} s:\n{log.read_text()[-2000:]}")


def stop(process: subprocess.Popen) -> None:
    """``ray start --block`` and everything it started share one process group: end them all."""
    for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
            process.wait(grace)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture
def two_node_cluster(tmp_path):
    """Head and worker node, one CPU each, with token authentication as a real deployment has."""
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths have a length limit
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    env.pop("RAY_ADDRESS", None)
    address = f"127.0.0.1:{free_port()}"
    common = ["--block", "--node-ip-address=127.0.0.1", "--num-cpus=1"]
    commands = {
        "head": ["start", "--head", f"--port={address.split(':')[1]}", "--include-dashboard=false"],
        "worker": ["start", f"--address={address}"],
    }
    processes = []
    try:
        for name, command in commands.items():
            log = tmp_path / f"{name}.log"
            extra = [f"--temp-dir={temp_dir}"] if name == "head" else []
            process = subprocess.Popen(
                [str(BIN / "ray"), *command, *common, *extra],
                env=env,
                stdout=log.open("w"),
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            processes.append(process)
            wait_for_line(log, STARTED, process)
        yield {**env, "RAY_ADDRESS": address}
    finally:
        for process in reversed(processes):
            stop(process)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_query_runs_on_an_existing_cluster_through_ray_address(two_node_cluster, engine_dirs):
    model_dir, index_dir = engine_dirs
    lissa = ["--recursion-depth", "30", "--lissa-batch-size", "4", "--scale", "20", "--damping", "0.1"]
    command = [str(BIN / "influence"), "query", "--text", QUERY, "--model", str(model_dir)]
    command += ["--index", str(index_dir), "--k", "25", "--top", "3", "--repetitions", "2", *lissa]
    result = subprocess.run(
        [*command, "--workers", "2", "--json"],
        env=two_node_cluster,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    payload = json.loads(result.stdout)
    assert "Connecting to existing Ray cluster" in result.stderr

    workers = payload["quality"]["lissa"]["workers"]
    nodes = {worker.split("/")[0] for worker in workers}
    assert len(workers) == 2 and len(nodes) == 2  # one repetition on each node (one CPU each)

    config = QueryConfig(25, 3, LissaConfig(30, 4, 2, 0.1, 20.0))
    local = LocalEngine(model_dir, index_dir=index_dir).query(QUERY, config=config)
    assert [e["id"] for e in payload["helpful"]] == [e.id for e in local.helpful]
    assert [e["id"] for e in payload["harmful"]] == [e.id for e in local.harmful]
    np.testing.assert_allclose(
        [e["score"] for e in payload["helpful"]], [e.score for e in local.helpful], rtol=1e-4
    )
