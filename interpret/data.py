"""Training and evaluation examples from local files or a hub dataset, with stable ids and a fingerprint.

A *source* is either a local file (``.tsv``, ``.csv``, ``.jsonl``/``.json``, ``.parquet``) or
``hub:NAME[/CONFIG]:SPLIT`` (for example ``hub:glue/sst2:train``), loaded with the ``datasets`` library.
An example's id is the value of ``id_column`` when given, else its row number in the source: stable for
as long as the source is unchanged, which the data fingerprint (stored in every index manifest) checks.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from interpret.storage import write_text_atomic

Rows = Sequence[int] | np.ndarray
"""Row numbers of an :class:`ExampleSet`: a list, a range or an integer array."""

_FORMATS = {".tsv": "csv", ".csv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}


class DataFileError(ValueError):
    """A data source that cannot be used; the message names the file and the column."""


@dataclass(frozen=True)
class DataSpec:
    """Where a split lives and which columns hold the text, the optional second text, and the label."""

    source: str
    text_column: str = "text"
    pair_column: str | None = None
    label_column: str = "label"
    id_column: str | None = None
    max_examples: int | None = None
    """A seeded random subset of this many rows (ids stay the source's row numbers); ``None``: all."""
    sample_seed: int = 0

    def __post_init__(self) -> None:
        if self.max_examples is not None and self.max_examples < 1:
            raise ValueError(f"max_examples must be >= 1, got {self.max_examples}")

    @property
    def is_hub(self) -> bool:
        return self.source.startswith("hub:")

    def with_absolute_source(self) -> DataSpec:
        """This spec with a local file's path made absolute (read from another working directory or
        process); a hub name, or a path that does not exist here, as it is."""
        path = Path(self.source)
        return replace(self, source=str(path.resolve())) if path.exists() else self


@dataclass
class ExampleSet:
    """Examples of one split: texts, optional pair texts, integer labels, string ids."""

    texts: list[str]
    pairs: list[str] | None
    labels: np.ndarray
    ids: list[str]
    fingerprint: str
    source: str

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def num_labels(self) -> int:
        return int(self.labels.max()) + 1 if len(self.labels) else 0

    def rows_of(self, ids: list[str]) -> np.ndarray:
        """The row of each id (as answers show them); ``ValueError`` naming ids this set does not hold."""
        positions = {identifier: row for row, identifier in enumerate(self.ids)}
        unknown = [identifier for identifier in ids if identifier not in positions]
        if unknown:
            raise ValueError(
                f"ids {unknown[:5]} are not in the training data {self.source} ({len(unknown)} unknown)"
            )
        return np.asarray([positions[identifier] for identifier in ids], dtype=np.int64)

    def subset(self, rows: np.ndarray | list[int]) -> ExampleSet:
        """A slice of this set; the fingerprint changes because the data does."""
        rows = list(map(int, rows))
        fingerprint = hashlib.sha256(f"{self.fingerprint}|{rows}".encode()).hexdigest()
        pairs = [self.pairs[i] for i in rows] if self.pairs is not None else None
        return ExampleSet(
            [self.texts[i] for i in rows],
            pairs,
            self.labels[rows],
            [self.ids[i] for i in rows],
            fingerprint,
            self.source,
        )

    def example(self, row: int) -> dict:
        return {
            "id": self.ids[row],
            "text": self.texts[row],
            "text_pair": self.pairs[row] if self.pairs is not None else None,
            "label": int(self.labels[row]),
        }


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _load_local(path: Path):
    from datasets import load_dataset

    if not path.is_file():
        raise DataFileError(f"{path}: no such file")
    fmt = _FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DataFileError(f"{path}: unsupported extension {path.suffix!r}; use one of {sorted(_FORMATS)}")
    if path.stat().st_size == 0:
        raise DataFileError(f"{path}: the file is empty")
    kwargs: dict = {}
    if path.suffix.lower() == ".tsv":
        # GLUE's TSVs contain bare quotes: read them literally, and keep "null"/"NA" as text.
        kwargs = {"delimiter": "\t", "quoting": 3, "keep_default_na": False}
    elif fmt == "csv":
        kwargs = {"keep_default_na": False}
    try:
        return load_dataset(fmt, data_files=str(path), split="train", **kwargs)
    except Exception as error:  # datasets wraps parser errors in several types
        if "corresponds to no data" in str(error):  # a header and nothing else
            raise DataFileError(f"{path}: no rows") from error
        raise DataFileError(f"{path}: could not be parsed as {fmt}: {error}") from error


def _load_hub(source: str):
    from datasets import load_dataset

    try:
        name_config, split = source[len("hub:") :].rsplit(":", 1)
    except ValueError:
        raise DataFileError(f"{source}: hub sources look like 'hub:NAME[/CONFIG]:SPLIT'") from None
    name, _, config = name_config.partition("/")
    return load_dataset(name, config or None, split=split)


def _column(dataset, origin: str, column: str, role: str) -> list:
    if column not in dataset.column_names:
        raise DataFileError(
            f"{origin}: {role} column {column!r} not found; columns are {dataset.column_names} "
            f"(set --{role}-column)"
        )
    return dataset[column]


def _labels(values: list, origin: str, column: str) -> np.ndarray:
    for row, value in enumerate(values):
        is_integer = isinstance(value, int | np.integer) and not isinstance(value, bool)
        if not is_integer and isinstance(value, str):
            is_integer = value.strip().lstrip("-").isdigit()
        if not is_integer:
            raise DataFileError(
                f"{origin}: label column {column!r} must hold integers 0..C-1; row {row} has {value!r}"
            )
    labels = np.asarray([int(v) for v in values], dtype=np.int64)
    if len(labels) and labels.min() < 0:
        raise DataFileError(f"{origin}: label column {column!r} has negative label {labels.min()}")
    return labels


def _texts(values: list, origin: str, column: str) -> list[str]:
    for row, value in enumerate(values):
        if not isinstance(value, str):
            raise DataFileError(f"{origin}: text column {column!r} row {row} is {value!r}, not a string")
    return [v.strip() for v in values]


def require_words(text: str | None, field: str = "text") -> None:
    """An input to explain or attack must hold words: an empty or whitespace-only one is refused by name
    (instead of failing deep inside a method: LIME's sampler, an attack's search)."""
    if text is not None and not text.strip():
        raise ValueError(f"{field} is empty or only whitespace: give the words to explain")


def load_examples(spec: DataSpec) -> ExampleSet:
    """Load one split; every problem raises :class:`DataFileError` naming the file and column."""
    dataset = _load_hub(spec.source) if spec.is_hub else _load_local(Path(spec.source))
    origin = spec.source
    if len(dataset) == 0:
        raise DataFileError(f"{origin}: no rows")
    texts = _texts(_column(dataset, origin, spec.text_column, "text"), origin, spec.text_column)
    pairs = None
    if spec.pair_column is not None:
        pairs = _texts(_column(dataset, origin, spec.pair_column, "pair"), origin, spec.pair_column)
    labels = _labels(_column(dataset, origin, spec.label_column, "label"), origin, spec.label_column)
    if spec.id_column is not None:
        ids = [str(v) for v in _column(dataset, origin, spec.id_column, "id")]
        if len(set(ids)) != len(ids):
            raise DataFileError(f"{origin}: id column {spec.id_column!r} has duplicate values")
    else:
        ids = [str(i) for i in range(len(texts))]
    content = dataset._fingerprint if spec.is_hub else _file_sha256(Path(spec.source))
    columns = json.dumps([spec.text_column, spec.pair_column, spec.label_column, spec.id_column])
    fingerprint = hashlib.sha256(f"{content}|{columns}".encode()).hexdigest()
    examples = ExampleSet(texts, pairs, labels, ids, fingerprint, origin)
    if spec.max_examples is None or spec.max_examples >= len(examples):
        return examples
    rng = np.random.default_rng(spec.sample_seed)
    return examples.subset(np.sort(rng.choice(len(examples), spec.max_examples, replace=False)))


def chain_fingerprint(fingerprints: Sequence[str]) -> str:
    """The fingerprint of sets appended in order: the first set's own when alone, else a SHA-256 of the
    parts' fingerprints (what a grown gradient index records as its data fingerprint)."""
    if len(fingerprints) == 1:
        return fingerprints[0]
    return hashlib.sha256("+".join(fingerprints).encode()).hexdigest()


@dataclass(frozen=True)
class AddedRows:
    """Rows appended to a training set after a gradient index was built over it (``influence index add``):
    their sources in order, and the fingerprint of the set they extend."""

    base_fingerprint: str
    specs: tuple[DataSpec, ...]


def write_rows(folder: str | Path, rows: Sequence[dict], like: DataSpec) -> DataSpec:
    """``rows`` (each ``text``, ``text_pair``, ``label``, ``id``) as a JSON-lines file in ``folder`` under
    ``like``'s column names, named by its content and written atomically (the same rows give the same
    file, hence the same fingerprint); the spec that reads it back."""
    columns = {
        "text": like.text_column,
        "text_pair": like.pair_column,
        "label": like.label_column,
        "id": like.id_column,
    }
    lines = [
        json.dumps({columns[key]: value for key, value in row.items() if columns.get(key)}, sort_keys=True)
        for row in rows
    ]
    content = "\n".join(lines) + "\n"
    path = Path(folder).resolve() / f"rows-{hashlib.sha256(content.encode()).hexdigest()[:16]}.jsonl"
    if not path.is_file():
        write_text_atomic(path, content)
    return DataSpec(str(path), like.text_column, like.pair_column, like.label_column, like.id_column)


def with_added_rows(examples: ExampleSet, added: AddedRows | None) -> ExampleSet:
    """``examples`` with the added rows appended, when they extend exactly this set (else unchanged: an
    index grown over other data is then refused by its data fingerprint). An added source without an id
    column numbers its rows after the rows before it; an id that appears twice is refused."""
    if added is None or not added.specs or examples.fingerprint != added.base_fingerprint:
        return examples
    parts = [examples]
    for spec in added.specs:
        part = load_examples(spec)
        if (part.pairs is None) != (examples.pairs is None):
            raise DataFileError(
                f"{part.source}: added rows must have a second text exactly when the training data does"
            )
        offset = sum(len(p) for p in parts)
        ids = part.ids if spec.id_column is not None else [str(offset + i) for i in range(len(part))]
        parts.append(ExampleSet(part.texts, part.pairs, part.labels, ids, part.fingerprint, part.source))
    ids = [identifier for part in parts for identifier in part.ids]
    if len(set(ids)) != len(ids):
        raise DataFileError(f"{added.specs[-1].source}: added rows repeat ids of the rows before them")
    return ExampleSet(
        [text for part in parts for text in part.texts],
        None if examples.pairs is None else [pair for part in parts for pair in part.pairs or []],
        np.concatenate([part.labels for part in parts]),
        ids,
        chain_fingerprint([part.fingerprint for part in parts]),
        examples.source,
    )


LOCAL_SST2 = Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2"
"""Where SST-2 lies on our machines and in CI (``../shared`` beside the checkout)."""


def sst2_spec(split: str, max_examples: int | None = None) -> DataSpec:
    """SST-2 from ``../shared/data/sst2`` when present, else GLUE's copy on the hub."""
    local = LOCAL_SST2 / ("train.tsv" if split == "train" else "dev.tsv")
    if local.is_file():
        return DataSpec(str(local), max_examples=max_examples)
    source = f"hub:glue/sst2:{'train' if split == 'train' else 'validation'}"
    return DataSpec(source, text_column="sentence", max_examples=max_examples)
