"""Fine-tune the default model (all-MiniLM-L6-v2, last 2 layers + head) on SST-2; record accuracy and time.

python benchmarks/train_sst2.py [--out artifacts/model] [--epochs 1] [--max-examples N]
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import write_result
from interpret.data import load_examples, sst2_spec
from interpret.models import DEFAULT_MODEL
from interpret.training import TrainConfig, save_classifier, train_classifier


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="artifacts/model")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--max-examples", type=int, default=None)
    args = parser.parse_args()
    train_spec = sst2_spec("train", args.max_examples)
    train, dev = load_examples(train_spec), load_examples(sst2_spec("dev"))
    config = TrainConfig(epochs=args.epochs)
    tracked, report = train_classifier(DEFAULT_MODEL, train, 2, config, eval_set=dev)
    card = save_classifier(args.out, tracked, DEFAULT_MODEL, train, config, report, train_spec)
    write_result(
        "train_sst2",
        {
            "command": "python benchmarks/train_sst2.py " + " ".join(sys.argv[1:]),
            "model": DEFAULT_MODEL,
            "tracked_layers": 2,
            "tracked_parameters": tracked.num_parameters,
            "train_config": asdict(config),
            "dev_accuracy": report.eval_accuracy,
            "train_examples": report.train_examples,
            "dev_examples": report.eval_examples,
            "wall_seconds": report.seconds,
            "model_fingerprint": card["model_fingerprint"],
        },
    )


if __name__ == "__main__":
    main()
