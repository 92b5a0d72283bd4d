"""The request path in one place: a local, in-process engine over a trained model, its data and index.

1. prepare the test point (prediction, ``v``, features); 2. ``s_test`` by LiSSA (or exact);
3. kNN search for k candidates; 4. score only the candidates; 5. top helpful / harmful.
The Ray pool (``workers/``) will take steps 2 and 4; this engine is the single-process reference.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch

from index import FeatureIndex, load_index
from interpret.data import DataSpec, ExampleSet, load_examples
from interpret.influence import ExampleStates, InfluenceAnswer, QueryConfig, influence_query, training_hessian
from interpret.models import TrackedModel, load_classifier, model_fingerprint
from interpret.training import CARD_FILE

REPO_ROOT = Path(__file__).resolve().parents[1]
LOCAL_SST2 = REPO_ROOT.parent / "shared" / "data" / "sst2"


def sst2_spec(split: str) -> DataSpec:
    """SST-2 from ``../shared/data/sst2`` when present, else GLUE's copy on the hub."""
    local = LOCAL_SST2 / ("train.tsv" if split == "train" else "dev.tsv")
    if local.is_file():
        return DataSpec(str(local))
    return DataSpec(f"hub:glue/sst2:{'train' if split == 'train' else 'validation'}", text_column="sentence")


def read_card(model_dir: str | Path) -> dict:
    path = Path(model_dir) / CARD_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def card_data_spec(card: dict) -> DataSpec | None:
    return DataSpec(**card["data_spec"]) if card.get("data_spec") else None


class LocalEngine:
    """Holds the model, the training examples and the index; answers influence queries in-process."""

    def __init__(
        self,
        model_dir: str | Path,
        train_spec: DataSpec | None = None,
        index_dir: str | Path | None = None,
        tracked_layers: int | str | None = None,
        dtype: torch.dtype = torch.float32,
    ):
        self.card = read_card(model_dir)
        train_spec = train_spec or card_data_spec(self.card)
        if train_spec is None:
            raise ValueError(f"{model_dir}: no card.json naming the training data; pass the training data")
        model, tokenizer = load_classifier(str(model_dir), dtype=dtype)
        scope = tracked_layers if tracked_layers is not None else self.card.get("tracked_layers", 2)
        self.tracked = TrackedModel(model, tokenizer, scope, self.card.get("max_length", 128))
        self.examples: ExampleSet = load_examples(train_spec)
        self.train = ExampleStates(self.tracked, self.examples)
        self.fingerprint = model_fingerprint(model)
        self.index: FeatureIndex | None = None
        if index_dir is not None:
            self.index = load_index(index_dir, self.fingerprint, self.examples.fingerprint)
        self._hessian: torch.Tensor | None = None

    def hessian(self) -> torch.Tensor:
        """The explicit training Hessian, computed once (only for small tracked sets)."""
        if self._hessian is None:
            self._hessian = training_hessian(self.tracked, self.tracked.parameters(), self.train)
        return self._hessian

    def query(
        self,
        text: str,
        pair: str | None = None,
        label: int | None = None,
        config: QueryConfig | None = None,
        progress: bool = False,
    ) -> InfluenceAnswer:
        config = config or QueryConfig()
        if config.k is not None and self.index is None:
            raise ValueError("k was given but no index is loaded; build one or use a full scan (k=None)")
        return influence_query(
            self.tracked,
            self.train,
            text,
            pair,
            label,
            config,
            search=self.index.search if self.index is not None else None,
            hessian=self.hessian() if config.exact else None,
            progress=progress,
        )


def answer_to_dict(answer: InfluenceAnswer) -> dict:
    """JSON-ready view of an answer (what ``influence query --json`` prints)."""
    out = {
        "prediction": {"label": answer.predicted_label, "probabilities": answer.probabilities},
        "label_used": answer.label_used,
        "helpful": [asdict(e) for e in answer.helpful],
        "harmful": [asdict(e) for e in answer.harmful],
        "candidates": len(answer.candidate_rows),
        "timings_s": answer.timings,
    }
    if answer.s_test is not None:
        out["lissa"] = {
            "config": asdict(answer.s_test.config),
            "final_norm": [float(t[-1]) for t in answer.s_test.norm_traces],
            "relative_spread": answer.s_test.relative_spread,
        }
    return out
