"""The compose topology with real processes on 127.0.0.1: a Ray head (no CPUs for actors, as in
docker-compose.yml), a worker node, the index-build job writing into a volume folder, and the API under
uvicorn joining through RAY_ADDRESS. The answer's s_test repetitions must have run on the worker node."""

from __future__ import annotations

import shutil
import subprocess
import tempfile

import pytest

from clients import InfluenceClient
from tests.cluster import (
    BIN,
    free_port,
    is_descendant,
    processes_named,
    ray_node,
    start,
    stop,
    token_env,
    wait_ready,
)

# The deployment topology as real processes: not in the fast tier (pytest -m 'not slow').
pytestmark = pytest.mark.slow

QUERY = "the plot was good and fun"
LISSA = {"recursion_depth": 20, "batch_size": 4, "damping": 0.1, "scale": 20.0, "num_repetitions": 2}


@pytest.fixture
def volumes(tmp_path, engine_dirs):
    """The compose named volumes as folders: the model copied in, the index volume empty."""
    root = tmp_path / "volumes"
    shutil.copytree(engine_dirs[0], root / "models" / "model")
    (root / "indexes").mkdir(parents=True)
    return root


def test_compose_topology_runs_s_test_on_the_worker_node(volumes, tmp_path):
    env = token_env()
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    address = f"127.0.0.1:{free_port()}"
    model, index = volumes / "models" / "model", volumes / "indexes" / "index"
    processes = []
    try:
        head = ["--head", f"--port={address.split(':')[1]}", "--num-cpus=0", "--include-dashboard=false"]
        processes.append(ray_node(env, tmp_path / "head.log", *head, f"--temp-dir={temp_dir}"))
        worker = ray_node(env, tmp_path / "worker.log", f"--address={address}", "--num-cpus=2")
        processes.append(worker)

        job = [str(BIN / "influence"), "index", "build", "--model", str(model), "--out", str(index)]
        built = subprocess.run(
            job, env=env, capture_output=True, text=True, timeout=300
        )  # compose: index-build
        assert built.returncode == 0 and (index / "manifest.json").is_file(), built.stderr[-2000:]

        port = free_port()
        api_env = {
            **env,
            "RAY_ADDRESS": address,
            "INFLUENCE_MODEL_DIR": str(model),
            "INFLUENCE_INDEX_DIR": str(index),
            "INFLUENCE_API_KEY": "compose-key",
            "INFLUENCE_WORKERS": "2",
        }
        uvicorn = [str(BIN / "uvicorn"), "--factory", "service.app:create_app", "--host", "127.0.0.1"]
        api = start([*uvicorn, "--port", str(port)], api_env, tmp_path / "api.log")
        processes.append(api)
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, api, tmp_path / "api.log")

        with InfluenceClient(url, api_key="compose-key") as client:
            result = client.influence(QUERY, k=20, top=3, lissa=LISSA).results[0]
            model_info = client.models().models[0]
        assert result.quality.candidates == 20 and result.helpful + result.harmful
        assert model_info.index_manifest["count"] == 96 and model_info.workers == 2
        # The answer names no worker (issue 23): the actors that computed it are found by process instead,
        # both under the worker node and none under the API.
        assert result.quality.lissa.workers is None
        pids = processes_named("ray::InfluenceWorker")
        assert len([pid for pid in pids if is_descendant(pid, worker.pid)]) == 2, pids
        assert not any(is_descendant(pid, api.pid) or is_descendant(pid, processes[0].pid) for pid in pids)
    finally:
        for process in reversed(processes):
            stop(process)
        shutil.rmtree(temp_dir, ignore_errors=True)
