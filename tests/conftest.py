"""Tiny random BERT classifiers and a synthetic sentiment dataset, built once per test session."""

from __future__ import annotations

import os
import platform
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
RAY_TEST_CPUS = 6  # logical: more actors than the 2 cores, so pools of several workers fit
torch.set_num_threads(min(2, torch.get_num_threads()))

POSITIVE = ["good", "great", "fine", "lovely", "superb", "fun", "warm", "smart"]
NEGATIVE = ["bad", "awful", "dull", "poor", "boring", "weak", "cold", "silly"]
NEUTRAL = ["the", "movie", "film", "plot", "is", "was", "a", "very", "and", "story", "cast", "quite"]
SHARED_SST2 = Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2"


def _cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else what ``platform`` knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def pytest_report_header(config) -> list[str]:
    """Which machine a report came from: float64 results that come from solves round differently on
    other CPUs and BLAS kernels (``tests/exactness.py`` says how the tests allow for it)."""
    from threadpoolctl import threadpool_info

    libraries = ", ".join(
        f"{i['internal_api']} {i.get('version') or ''} ({i.get('architecture') or i['prefix']}, "
        f"{i['num_threads']} threads)".replace("  ", " ")
        for i in threadpool_info()
    )
    torch_blas = "MKL" if torch.backends.mkl.is_available() else "no MKL"
    return [
        f"cpu: {_cpu_model()}, {os.cpu_count()} logical cores",
        f"torch {torch.__version__}: {torch_blas}, {torch.backends.cpu.get_cpu_capability()} kernels, "
        f"{torch.get_num_threads()} threads (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')})",
        f"threadpoolctl: {libraries or 'no native thread pools loaded yet'}",
    ]


def synthetic_rows(count: int, seed: int) -> list[tuple[str, int]]:
    """Sentences whose label is the majority sentiment of their sentiment words (ties avoided)."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(count):
        label = int(rng.integers(2))
        strong, weak = (POSITIVE, NEGATIVE) if label else (NEGATIVE, POSITIVE)
        words = list(rng.choice(NEUTRAL, size=rng.integers(2, 6)))
        words += list(rng.choice(strong, size=2)) + list(rng.choice(weak, size=rng.integers(0, 2)))
        rng.shuffle(words)
        rows.append((" ".join(words), label))
    return rows


def write_tsv(path: Path, rows: list[tuple[str, int]]) -> Path:
    path.write_text("text\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in rows))
    return path


def save_plain(tiny_dir: Path, folder: Path, label_names=("negative", "positive")) -> Path:
    """The tiny BERT as another trainer leaves it: weights, config (with label names) and tokenizer only,
    no card."""
    from interpret.models import load_classifier, set_label_names

    model, tokenizer = load_classifier(str(tiny_dir))
    set_label_names(model.config, list(label_names))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory, data_dir) -> Path:
    """A tiny BERT classifier (3 layers, hidden 16) fine-tuned briefly on the synthetic data.

    Trained rather than random: a random tiny BERT maps every sentence to almost the same pooled vector,
    which makes influence scores degenerate (all equal) and tests of them vacuous.
    """
    from interpret.data import DataSpec, load_examples
    from interpret.models import TrackedModel
    from interpret.training import TrainConfig, fine_tune

    folder = tmp_path_factory.mktemp("tiny-bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *POSITIVE, *NEGATIVE, *NEUTRAL]
    tokenizer = BertTokenizerFast(vocab={word: i for i, word in enumerate(vocab)})
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
        num_labels=2,
    )
    torch.manual_seed(0)
    model = BertForSequenceClassification(config).eval()
    tracked = TrackedModel(model, tokenizer, tracked_layers=3)
    train = load_examples(DataSpec(str(data_dir / "train.tsv")))
    fine_tune(
        tracked, train, config=TrainConfig(epochs=25, batch_size=16, learning_rate=1e-2), progress=False
    )
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("data")
    write_tsv(folder / "train.tsv", synthetic_rows(96, seed=1))
    write_tsv(folder / "dev.tsv", synthetic_rows(48, seed=2))
    return folder


@pytest.fixture
def tiny64(tiny_dir):
    """The tiny model in float64 (tight tolerances), fresh per test."""
    from interpret.models import load_classifier

    return load_classifier(str(tiny_dir), dtype=torch.float64)


@pytest.fixture(scope="session")
def train_set(data_dir):
    from interpret.data import DataSpec, load_examples

    return load_examples(DataSpec(str(data_dir / "train.tsv")))


@pytest.fixture(scope="session")
def engine_dirs(tiny_dir, data_dir, tmp_path_factory):
    """The tiny model with a card naming its data (last layer tracked), and a Flat index over its data."""
    import json

    from index import build_index
    from interpret.data import DataSpec, load_examples
    from interpret.models import TrackedModel, encode_features, load_classifier, model_fingerprint
    from interpret.training import CARD_FILE

    model, tokenizer = load_classifier(str(tiny_dir))
    spec = DataSpec(str(data_dir / "train.tsv"))
    card = {"tracked_layers": 1, "max_length": 32, "data_spec": asdict(spec)}
    (tiny_dir / CARD_FILE).write_text(json.dumps(card))
    examples = load_examples(spec)
    features = encode_features(TrackedModel(model, tokenizer, 0), examples.texts, progress=False)
    index_dir = tmp_path_factory.mktemp("index")
    build_index(features, index_dir, model_fingerprint(model), examples.fingerprint)
    return tiny_dir, index_dir


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray cluster for the whole test run, with a fixed CPU count and no dashboard."""
    import ray

    ray.init(address="local", num_cpus=RAY_TEST_CPUS, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
