"""Which curvature can make the gradient index the exact influence on a trained tiny model?

    python benchmarks/curvature.py [--families bert gpt2] [--epochs 2 12] [--rows 200]

Issue 36 asks the default gradient index to rank every training row like the exact influence (explicit
Hessian of the mean training loss, damping 5, float64) at Spearman >= 0.999, on a trained tiny encoder and
decoder. This separates the curvature's share of the error from the projection's: every curvature here
is used **unprojected** (the full tracked set, float64), so a shortfall is the curvature's alone.

* ``fisher``: the empirical Fisher ``1/N sum g_z g_z^T`` (the index's default preconditioner);
* ``ggn``: the exact Gauss-Newton matrix ``1/N sum J_z^T (diag p - p p^T) J_z``. For two labels each row's
  gradient is ``g_z = (p_y - 1) J_z^T (e_y - e_other)``, so the GGN is the Fisher reweighted row by row:
  ``w_z = p_y / (1 - p_y)`` (the best any K-FAC / EK-FAC / sampled-Fisher curvature can approach);
* ``hessian``: the explicit Hessian itself (the check: 1.0 by construction).

The models are the tests' tiny families (``tests/families.py``), fine-tuned by ``influence train``'s
functions on ``--rows`` synthetic rows (the last block and the head tracked) for each ``--epochs``. The
Hessian's extreme eigenvalues are reported beside the GGN's: a negative eigenvalue, or a top eigenvalue
the GGN does not reach, is curvature no positive semi-definite approximation has.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import write_result
from engine.pipeline import local_engine
from interpret.data import DataSpec, load_examples
from interpret.influence.objective import per_example_gradients
from interpret.training import TrainConfig, save_classifier, train_classifier
from tests.conftest import synthetic_rows, write_tsv
from tests.families import family_classifier

DAMPING = 5.0
SENTENCES = ("the plot was boring and fun", "a gorgeous witty movie", "bad")
CURVATURES = ("fisher", "ggn", "hessian")


def trained_engine(family: str, epochs: int, rows: int, folder: Path):
    """The family's tiny classifier fine-tuned ``epochs`` times over ``rows`` synthetic rows (float64)."""
    spec = DataSpec(str(write_tsv(folder / "train.tsv", synthetic_rows(rows, seed=5))))
    examples = load_examples(spec)
    model, tokenizer = family_classifier(family, dtype=torch.float32)
    model.save_pretrained(folder / "base")
    tokenizer.save_pretrained(folder / "base")
    config = TrainConfig(epochs=epochs, batch_size=16, learning_rate=3e-3)
    tracked, report = train_classifier(
        str(folder / "base"), examples, 1, config, max_length=32, progress=False
    )
    save_classifier(folder / "model", tracked, str(folder / "base"), examples, config, report, spec)
    return local_engine(folder / "model", dtype=torch.float64)


def measure(family: str, epochs: int, rows: int) -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        engine = trained_engine(family, epochs, rows, Path(scratch))
        explainer = engine.backend.explainer
        tracked, theta = explainer.tracked, explainer.theta
        train = explainer.checkpoint.training("the benchmark")[1]
        start = time.perf_counter()
        hessian = explainer._training_hessian()
        hessian_s = time.perf_counter() - start
        gradients, correct = [], []
        for _, states, labels in train.iter_blocks(np.arange(len(train)), 32):
            gradients.append(per_example_gradients(tracked, theta, states, labels))
            correct.append(torch.softmax(tracked.logits(theta, states), -1).gather(1, labels[:, None])[:, 0])
        g, p_label = torch.cat(gradients), torch.cat(correct)
        curvatures = {
            "fisher": g.T @ g / len(g),
            "ggn": (g * (p_label / (1 - p_label))[:, None]).T @ g / len(g),
            "hessian": hessian,
        }
        eye = torch.eye(g.shape[1], dtype=torch.float64)
        per_sentence = []
        for text in SENTENCES:
            state = tracked.frozen(tracked.encode([text], None))
            predicted = tracked.logits(theta, state).argmax(1)
            test_gradient = per_example_gradients(tracked, theta, state, predicted)[0]
            scores = {
                name: (-g @ torch.linalg.solve(c + DAMPING * eye, test_gradient)).numpy()
                for name, c in curvatures.items()
            }
            truth = scores["hessian"]
            exact_top = set(np.argsort(truth)[:10].tolist())  # most helpful: most negative
            row = {"text": text}
            for name in CURVATURES:
                row[f"{name}_spearman"] = float(spearmanr(scores[name], truth)[0])
                found_top = set(np.argsort(scores[name])[:10].tolist())
                row[f"{name}_recall_at_10"] = len(exact_top & found_top) / 10
            per_sentence.append(row)
        h_eigen = torch.linalg.eigvalsh(hessian)
        return {
            "family": family,
            "epochs": epochs,
            "rows": rows,
            "tracked_parameters": int(g.shape[1]),
            "train_accuracy": float((p_label > 0.5).double().mean()),
            "hessian_seconds": round(hessian_s, 1),
            "hessian_eigen_min": float(h_eigen[0]),
            "hessian_eigen_max": float(h_eigen[-1]),
            "ggn_eigen_max": float(torch.linalg.eigvalsh(curvatures["ggn"])[-1]),
            "fisher_eigen_max": float(torch.linalg.eigvalsh(curvatures["fisher"])[-1]),
            "sentences": per_sentence,
            **{
                f"{name}_spearman_min": min(r[f"{name}_spearman"] for r in per_sentence)
                for name in ("fisher", "ggn")
            },
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=["bert", "gpt2"])
    parser.add_argument("--epochs", nargs="+", type=int, default=[2, 12])
    parser.add_argument("--rows", type=int, default=200)
    args = parser.parse_args()
    runs = [measure(f, e, args.rows) for f in args.families for e in args.epochs]
    worst = {name: min(run[f"{name}_spearman_min"] for run in runs) for name in ("fisher", "ggn")}
    summary = {
        "fisher_spearman_min": round(worst["fisher"], 4),
        "ggn_spearman_min": round(worst["ggn"], 4),
        "psd_curvature_reaches_0999": max(worst.values()) >= 0.999,
        "hessian_negative_eigen_min": round(min(run["hessian_eigen_min"] for run in runs), 3),
    }
    write_result("curvature", {"summary": summary, "damping": DAMPING, "runs": runs})


if __name__ == "__main__":
    main()
