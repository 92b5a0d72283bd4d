"""Helpers for tests that start real processes: Ray nodes, the API server, and waiting on them."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

BIN = Path(sys.executable).parent
STARTED = "Ray runtime started"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def token_env() -> dict[str, str]:
    """A fresh environment for a token-authenticated cluster of our own (no inherited RAY_ADDRESS)."""
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env.pop("RAY_ADDRESS", None)
    return env


def start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """A process in its own session, so :func:`stop` can end it with everything it started."""
    return subprocess.Popen(
        command, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True
    )


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


def wait_ready(url: str, process: subprocess.Popen, log: Path, timeout: float = 180.0) -> None:
    """Poll /readyz until the index is loaded and the workers answer."""
    limit = time.monotonic() + timeout
    while time.monotonic() < limit:
        if process.poll() is not None:
            raise AssertionError(f"the service exited early:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"not ready after {timeout:g} s:\n{log.read_text()[-3000:]}")


def stop(process: subprocess.Popen) -> None:
    """End the process group: ``ray start --block`` and uvicorn take their children with them."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
            process.wait(10)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def ray_node(env: dict[str, str], log: Path, *arguments: str) -> subprocess.Popen:
    """``ray start --block`` on 127.0.0.1 with the given arguments, once it reports it started."""
    command = [str(BIN / "ray"), "start", "--block", "--node-ip-address=127.0.0.1", *arguments]
    process = start(command, env, log)
    wait_for_line(log, STARTED, process)
    return process


def is_descendant(pid: int, ancestor: int) -> bool:
    """Whether ``pid`` runs under ``ancestor`` (walking parent ids in /proc)."""
    while pid > 1:
        if pid == ancestor:
            return True
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            return False
    return False


def processes_named(prefix: str) -> list[int]:
    """The PIDs whose command line starts with ``prefix`` (a Ray actor's is ``ray::ClassName...``)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_bytes().startswith(prefix.encode()):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids
