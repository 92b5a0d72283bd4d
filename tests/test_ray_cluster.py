"""A real two-node Ray cluster (``ray start --head`` + ``ray start --address``) used through RAY_ADDRESS."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile

import numpy as np
import pytest

from engine.pipeline import answer_query, local_engine
from interpret.influence import LissaConfig, QueryConfig
from tests.cluster import BIN, free_port, ray_node, stop, token_env

pytestmark = pytest.mark.slow  # a real two-node Ray cluster: not in the fast tier (pytest -m 'not slow')

QUERY = "the plot was good and fun"


@pytest.fixture
def two_node_cluster(tmp_path):
    """Head and worker node, one CPU each, with token authentication as a real deployment has."""
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths have a length limit
    env = token_env()
    address = f"127.0.0.1:{free_port()}"
    processes = []
    try:
        port = address.split(":")[1]
        head_arguments = [
            f"--port={port}",
            "--include-dashboard=false",
            "--num-cpus=1",
            f"--temp-dir={temp_dir}",
        ]
        processes.append(ray_node(env, tmp_path / "head.log", "--head", *head_arguments))
        processes.append(ray_node(env, tmp_path / "worker.log", f"--address={address}", "--num-cpus=1"))
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

    config = QueryConfig(
        k=25,
        top=3,
        lissa=LissaConfig(recursion_depth=30, batch_size=4, num_repetitions=2, damping=0.1, scale=20.0),
    )
    local = answer_query(local_engine(model_dir, index_dir=index_dir), QUERY, config=config)
    assert [e["id"] for e in payload["helpful"]] == [e.id for e in local.helpful]
    assert [e["id"] for e in payload["harmful"]] == [e.id for e in local.harmful]
    np.testing.assert_allclose(
        [e["score"] for e in payload["helpful"]], [e.score for e in local.helpful], rtol=1e-4
    )
