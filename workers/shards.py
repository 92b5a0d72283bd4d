"""The gradient index's shards on Ray actors: one actor holds and searches one shard, so the process that
answers queries holds no training vectors.

A query sends the test gradient to every shard actor at once and merges the top of each side
(``index.shards.merge_sides``). A shard whose actor died is loaded again, from its folder, on a fresh actor
and searched once more, as the pool re-runs a lost repetition; a second failure is the query's error.
Actors reserve no CPU (a search is milliseconds; the influence workers keep theirs) and are spread over the
cluster's nodes, each checking its shard against its own machine's memory before reading it.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import ray
from ray.exceptions import GetTimeoutError, RayTaskError

from index.gradient import GradientManifest, load_gradient_shard, read_gradient_manifest
from index.shards import IndexShard, Sides, merge_sides
from workers.cluster import WorkerPoolError, WorkerTimeoutError
from workers.lifecycle import ACTOR_ENV, WORKER_FAILURES


class ShardServer:
    """What one shard actor runs: its shard, loaded from the index folder, searched on request."""

    def __init__(self) -> None:
        self.shard: IndexShard | None = None

    def load(self, directory: str, number: int, max_bytes: int | None) -> int:
        """Load shard ``number`` (checked against the manifest, this machine's memory and ``max_bytes``);
        its row count."""
        manifest = read_gradient_manifest(directory)
        self.shard = load_gradient_shard(directory, manifest, number, max_bytes)
        return len(self.shard.rows)

    def search(self, query: np.ndarray, top: int, normalize: bool = False) -> Sides:
        if self.shard is None:
            raise RuntimeError("search before load: the shard actor holds no shard")
        return self.shard.search(query, top, normalize)


class ShardActors:
    """One :class:`ShardServer` actor per shard of the index in ``directory``; thread-safe."""

    def __init__(
        self, directory: str | Path, manifest: GradientManifest, max_bytes: int | None, deadline_s: float
    ) -> None:
        self.directory, self.max_bytes = str(Path(directory).resolve()), max_bytes
        self.deadline_s, self.count = deadline_s, manifest.shards
        self.replacements = 0
        """Shard actors replaced after they died: what operators watch."""
        self._lock = threading.Lock()
        # Ray's stubs type a handle's methods as the class's own, without .remote(): held as Any.
        self._remote: Any = ray.remote(ShardServer).options(
            num_cpus=0, max_restarts=0, scheduling_strategy="SPREAD", runtime_env={"env_vars": ACTOR_ENV}
        )
        self.actors: list = []
        try:
            self.actors = [self._remote.remote() for _ in range(self.count)]
            loads = [actor.load.remote(self.directory, n, max_bytes) for n, actor in enumerate(self.actors)]
            self._get(loads, "loading the shards")
        except BaseException:
            self.close()
            raise

    def _get(self, refs: list, what: str) -> list:
        """``ray.get`` within the deadline; an actor's own error raised as itself."""
        try:
            return ray.get(refs, timeout=self.deadline_s)
        except GetTimeoutError:
            raise WorkerTimeoutError(
                f"{what}: the gradient index's shard actors did not answer within {self.deadline_s:g} s"
            ) from None
        except RayTaskError as error:  # the shard's own refusal (too large, mismatched files)
            raise (error.cause or error) from None

    def search(self, query: np.ndarray, top: int, normalize: bool = False) -> Sides:
        """Every shard's top of each side, merged; a shard whose actor died is reloaded and searched again."""
        actors = list(self.actors)
        refs = [actor.search.remote(query, top, normalize) for actor in actors]
        ray.wait(refs, num_returns=len(refs), timeout=self.deadline_s)
        parts = []
        for number, ref in enumerate(refs):
            try:
                parts.append(self._get([ref], f"searching shard {number}")[0])
            except WORKER_FAILURES:
                replacement = self._replace(number, actors[number])
                retried = replacement.search.remote(query, top, normalize)
                try:
                    parts.append(self._get([retried], f"searching shard {number} again")[0])
                except WORKER_FAILURES as error:
                    raise WorkerPoolError(
                        f"shard {number} of the gradient index failed twice ({type(error).__name__}); "
                        "see the Ray logs of its actor"
                    ) from None
        return merge_sides(parts, top)

    def _replace(self, number: int, failed):
        """A fresh actor holding shard ``number`` in place of ``failed`` (unless another query already
        replaced it)."""
        with self._lock:
            if self.actors[number] is failed:
                ray.kill(failed)
                actor = self._remote.remote()
                self._get(
                    [actor.load.remote(self.directory, number, self.max_bytes)], f"reloading shard {number}"
                )
                self.actors[number] = actor
                self.replacements += 1
            return self.actors[number]

    def close(self) -> None:
        for actor in self.actors:
            ray.kill(actor)
        self.actors = []
