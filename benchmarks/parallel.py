"""FastIF's third speed-up: LiSSA repetitions and candidate scoring spread over Ray workers.

    python benchmarks/parallel.py [--model artifacts/model] [--workers 2] [--repetitions 2] [--depth 300]

Needs the demo's fine-tuned model (``influence demo`` or ``benchmarks/train_sst2.py``). Measures, on one dev
sentence, side by side in one run:

* T LiSSA repetitions one after another in this process (with 1 thread, and with as many threads as the
  pool has workers) against the same T on N single-threaded workers;
* scoring the kNN candidates in this process against the pool with one shard and with N shards;
* that the pool's ``s_test`` and scores equal the in-process ones (max relative difference).

Where CUDA is available, the workers get one GPU each (``--gpus-per-worker 1``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import ray
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import write_result
from interpret.checkpoint import load_checkpoint
from interpret.data import load_examples, sst2_spec
from interpret.influence import FASTIF_PRESET, QueryConfig, lissa_s_test, prepare_test_point, score_rows
from workers import PoolSettings, WorkerPool, WorkerSpec


def timed(function, *args, **kwargs):
    start = time.perf_counter()
    out = function(*args, **kwargs)
    return out, time.perf_counter() - start


def relative_difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def sequential(checkpoint, v, config, threads: int) -> tuple[torch.Tensor, float]:
    torch.set_num_threads(threads)
    theta = checkpoint.tracked.parameters()
    result, seconds = timed(lissa_s_test, checkpoint.tracked, theta, v, checkpoint.train, config)
    return result.s_test, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("artifacts/model"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repetitions", type=int, default=2)
    parser.add_argument("--depth", type=int, default=300)
    parser.add_argument("--candidates", type=int, default=4000)
    parser.add_argument("--gpus-per-worker", type=float, default=1.0 if torch.cuda.is_available() else 0.0)
    args = parser.parse_args()

    text = load_examples(sst2_spec("dev")).texts[0]
    config = QueryConfig(
        k=args.candidates,
        lissa=FASTIF_PRESET.replace(recursion_depth=args.depth, num_repetitions=args.repetitions),
    )
    device = "cuda" if args.gpus_per_worker > 0 else "cpu"
    checkpoint = load_checkpoint(args.model, device=device)
    theta = checkpoint.tracked.parameters()
    v = prepare_test_point(checkpoint.tracked, theta, text, None, None).v
    rows = np.random.default_rng(0).choice(len(checkpoint.examples), args.candidates, replace=False)

    s_test_1, sequential_1 = sequential(checkpoint, v, config.lissa, 1)
    s_test_n, sequential_n = sequential(checkpoint, v, config.lissa, args.workers)
    local_scores, local_score_seconds = timed(
        score_rows, checkpoint.tracked, theta, s_test_n, checkpoint.train, rows
    )

    ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
    settings = PoolSettings(num_workers=args.workers, gpus_per_worker=args.gpus_per_worker)
    pool, startup = timed(WorkerPool, WorkerSpec(str(args.model)), settings)
    start = time.perf_counter()
    s_test = pool.finish_s_test(pool.start_s_test(text, None, None, config))
    report = s_test.report
    pooled_s_test_seconds = time.perf_counter() - start
    pooled_s_test = pool.average(s_test)
    one_shard, one_shard_seconds = timed(pool.score, s_test, rows, num_shards=1)
    sharded, sharded_seconds = timed(pool.score, s_test, rows, num_shards=args.workers)
    pool.shutdown()

    write_result(
        "parallel",
        {
            "model": str(args.model),
            "tracked_parameters": checkpoint.tracked.num_parameters,
            "device": device,
            "workers": args.workers,
            "pool_startup_seconds": startup,
            "s_test": {
                "repetitions": args.repetitions,
                "recursion_depth": args.depth,
                "sequential_1_thread_seconds": sequential_1,
                f"sequential_{args.workers}_threads_seconds": sequential_n,
                "pool_seconds": pooled_s_test_seconds,
                "per_repetition_seconds_on_workers": report.seconds,
                "speedup_vs_sequential_1_thread": sequential_1 / pooled_s_test_seconds,
                f"speedup_vs_sequential_{args.workers}_threads": sequential_n / pooled_s_test_seconds,
                "max_relative_difference_vs_in_process": relative_difference(
                    pooled_s_test, s_test_1.cpu().numpy()
                ),
                "relative_spread": report.relative_spread,
            },
            "scoring": {
                "candidates": args.candidates,
                f"in_process_{args.workers}_threads_seconds": local_score_seconds,
                "pool_1_shard_seconds": one_shard_seconds,
                f"pool_{args.workers}_shards_seconds": sharded_seconds,
                "speedup_sharded_vs_1_shard": one_shard_seconds / sharded_seconds,
                "speedup_sharded_vs_in_process": local_score_seconds / sharded_seconds,
                "max_relative_difference_vs_in_process": relative_difference(sharded, local_scores),
                "max_relative_difference_1_shard_vs_sharded": relative_difference(one_shard, sharded),
            },
        },
    )


if __name__ == "__main__":
    main()
