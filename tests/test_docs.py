"""The README against the code: every ``influence ...`` line it shows runs against the real CLI's commands
and options, every ``INFLUENCE_*`` variable it names exists (and every setting is documented), and the
measured numbers it quotes are the ones in ``benchmarks/results/``."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import typer.main

from cli import app
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()

OTHER_VARIABLES = {
    "INFLUENCE_ARTIFACTS": "cli/common.py",
    "INFLUENCE_PORT": "docker-compose.yml",
    "INFLUENCE_UI_SCREENSHOTS": "tests/test_page.py",
    "INFLUENCE_CHROMIUM": "tests/test_page.py",
}
"""``INFLUENCE_*`` names that are not service settings, and the file that reads each."""


def _command_lines() -> list[str]:
    """Each ``influence ...`` command in the README's shell blocks, without comments or continuations."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", README, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            command = line.split(" # ")[0].strip()
            words = shlex.split(command, comments=True) if command else []
            while words and ("=" in words[0] and not words[0].startswith("-")):  # VAR=value prefixes
                words = words[1:]
            if words and words[0].endswith("influence"):
                lines.append(shlex.join(words))
    return lines


COMMAND_LINES = _command_lines()


def _resolve(words: list[str]) -> tuple[object, list[str]]:
    """The (sub)command the leading words name, and the words after them."""
    command = typer.main.get_command(app)
    rest = list(words)
    while hasattr(command, "commands") and rest and not rest[0].startswith("-"):  # a group (typer's click)
        name = rest.pop(0)
        assert name in command.commands, (
            f"`influence ... {name}`: no such command ({sorted(command.commands)})"
        )
        command = command.commands[name]
    return command, rest


def test_the_readme_shows_commands():
    assert len(COMMAND_LINES) > 20 and any(line.startswith("influence card") for line in COMMAND_LINES)


@pytest.mark.parametrize("line", COMMAND_LINES)
def test_every_readme_command_and_option_exists(line):
    command, rest = _resolve(shlex.split(line)[1:])
    options = {"--help"} | {
        name for parameter in command.params for name in (*parameter.opts, *parameter.secondary_opts)
    }
    given = {word.split("=")[0] for word in rest if word.startswith("--")}
    assert given <= options, f"{line}: {sorted(given - options)} not options of `{command.name}`"


def _settings_variables() -> set[str]:
    return {f"INFLUENCE_{name.upper()}" for name in Settings.model_fields}


def test_every_variable_the_readme_names_exists_and_every_setting_is_documented():
    named = {name for name in re.findall(r"INFLUENCE_[A-Z0-9_]+", README) if not name.endswith("_")}
    unknown = named - _settings_variables() - set(OTHER_VARIABLES)
    assert not unknown, f"the README names variables nothing reads: {sorted(unknown)}"
    undocumented = _settings_variables() - named
    assert not undocumented, f"settings the README does not document: {sorted(undocumented)}"
    for name, where in OTHER_VARIABLES.items():
        assert name in (ROOT / where).read_text(), f"{name} is not read in {where}"


# ------------------------------------------------------------------ numbers: each from its results file


def _results(name: str) -> dict:
    import json

    return json.loads((ROOT / "benchmarks" / "results" / name).read_text())


def _quoted_numbers() -> list[tuple[str, str]]:
    """``(phrase, source)``: what the README says, rendered from the JSON the benchmark wrote."""
    index, query = _results("gradient_index.json"), _results("influence_query.json")
    table = {
        (row["projection"], row["rank"]): row
        for row in index["table_rank_x_preconditioner"]
        if row["preconditioner"] == "fisher"
    }
    lissa = {(row["J"], row["B"], row["T"]): row for row in query["lissa_tradeoff"]}
    soak, arenas = _results("soak.json"), _results("soak_glibc_default_arenas.json")
    start = arenas["rss_mib"]["start"]
    phrases = [
        (f"`train_sst2.json`: {_results('train_sst2.json')['wall_seconds']:.0f} s", "train_sst2.json"),
        (f"`gradient_index.json`: {index['build']['build_seconds']:.0f} s", "gradient_index.json"),
        (
            f"first_answer.json`: {_results('first_answer.json')['summary']['first_answer_seconds']:.0f} s",
            "first_answer.json",
        ),
        (f"2,000 rows ({table['kfac', 16]['fit_seconds']:.0f} s on 2 CPU cores)", "gradient_index.json"),
        (f"J=1000, B=1 is {lissa[1000, 1, 1]['relative_error']:.0%} from", "influence_query.json"),
        (f"(cosine {lissa[1000, 1, 1]['cosine']:.3f})", "influence_query.json"),
        (
            f"is {lissa[500, 4, 1]['relative_error']:.0%} off (cosine {lissa[500, 4, 1]['cosine']:.3f})",
            "influence_query.json",
        ),
        (
            f"took {soak['default_parameters_one_request']['triggers']['seconds']:.0f} s on a one-CPU worker",
            "soak.json",
        ),
        (
            f"at {start:,.0f} MiB and grew +{arenas['rss_mib']['end'] - start:.0f} MiB",
            "soak_glibc_default_arenas.json",
        ),
        (f"({soak['rss_mib']['start']:,.0f} -> {soak['rss_mib']['end']:,.0f} MiB;", "soak.json"),
        (
            f"{soak['evaluate_churn']['deleted']} DELETEd evaluate jobs all ended `cancelled` within "
            f"{soak['evaluate_churn']['seconds_to_cancelled_max']:.1f} s",
            "soak.json",
        ),
        (f"waited {soak['summary']['interactive_job_wait_p95_s']:.2f} s at p95", "soak.json"),
    ]
    phrases += _curvature_phrases(_results("curvature.json"))
    families = _results("architectures.json")["summary"]
    phrases.append(
        (
            f"generic path costs {families['minilm_generic_over_fast_build']:.2f}x the fast path's build, "
            f"{families['minilm_generic_over_fast_query']:.2f}x its query and "
            f"{families['minilm_generic_over_fast_lissa_step']:.2f}x its LiSSA step",
            "architectures.json",
        )
    )
    summary, agreement = index["summary"], index["rerank_sweep"]["reference_agreement"]
    phrases += [
        (f"query takes {summary['gradient_query_p50_s']:.2f} s through REST (p50", "gradient_index.json"),
        (f"the default preset {summary['fastif_query_p50_s']:.0f} s in the last full", "gradient_index.json"),
        (
            f"finds {summary['recall_at_100_helpful']:.2f} of the reference's top 100 helpful and "
            f"{summary['recall_at_100_harmful']:.2f} of the top 100 harmful examples, Spearman "
            f"{summary['spearman_all']:.2f}",
            "gradient_index.json",
        ),
        (
            f"lifts that to {summary['recall_at_100_helpful_rerank']:.2f} / "
            f"{summary['recall_at_100_harmful_rerank']:.2f} in "
            f"{summary['gradient_rerank_query_p50_s']:.0f} s",
            "gradient_index.json",
        ),
        (
            f"finds {summary['recall_at_100_helpful_rerank_fast']:.2f} / "
            f"{summary['recall_at_100_harmful_rerank_fast']:.2f} in "
            f"{summary['gradient_rerank_fast_query_p50_s']:.1f} s\n  through REST",
            "gradient_index.json",
        ),
        (
            f"finds only {agreement['recall_at_100_helpful']:.2f} / "
            f"{agreement['recall_at_100_harmful']:.2f} of the first one's top 100",
            "gradient_index.json",
        ),
        (f"({summary['build_seconds'] / 60:.1f} min in all for SST-2", "gradient_index.json"),
        (f"example ({summary['index_bytes'] / 1e6:.0f} MB for SST-2", "gradient_index.json"),
    ]
    overlap = index["candidate_overlap"]
    phrases.append(
        (
            f"touch only {overlap['distinct_rows']:,} distinct rows, and the last 10 found "
            f"{np.mean(overlap['seen_before_share'][-10:]):.0%} of their",
            "gradient_index.json",
        )
    )
    sweep = index["rerank_sweep"]["recall_by_k"]  # "K = 150, 250 ... find a / b, c / d ... and y / z"
    pairs = [f"{r['recall_at_100_helpful']:.2f} / {r['recall_at_100_harmful']:.2f}" for r in sweep.values()]
    listed = ", ".join(pairs[:-1]) + " and " + pairs[-1]
    phrases.append((f"K = {', '.join(sweep)} find {listed}", "gradient_index.json"))
    for row in index["table_curvature"]:  # the README's curvature table, every row
        cells = [row["recall_at_100_helpful"], row["recall_at_100_harmful"], row["spearman_all"]]
        rendered = " | ".join(f"{value + 1e-9:.2f}" for value in cells)
        name = f"{row['variant']}, damping {row['damping']:g}"
        phrases.append((f"| {name} | {row['dim']:,} | {rendered} |", "gradient_index.json"))
    shown = [("random", 16), ("random", 32), ("kfac", 8), ("kfac", 16), ("kfac", 32)]  # the README's rows
    for kind, rank in shown:
        row = table[kind, rank]
        cells = [row["recall_at_100_helpful"], row["recall_at_100_harmful"], row["spearman_all"]]
        name = f"{kind} {rank} (the earlier default)" if (kind, rank) == ("kfac", 16) else f"{kind} {rank}"
        rendered = " | ".join(f"{value + 1e-9:.2f}" for value in cells)  # half up: 0.905 -> 0.91
        phrases.append((f"| {name} | {row['dim']:,} | {rendered} |", "gradient_index.json"))
    phrases += _application_phrases()
    phrases += _peer_phrases()
    phrases += _projection_phrases()
    phrases += _exact_curvature_phrases()
    return phrases


def _peer_phrases() -> list[tuple[str, str]]:
    """The README's LDS against the peers' EK-FAC: its table, the index's damping sweep and the held-out
    points, each cell from ``lds_peers.json``."""
    peers = _results("lds_peers.json")

    def cell(run: dict, method: str) -> str:
        interval = run["intervals"][method]
        return f"{run['lds'][method]:.3f} | {interval['low']:.3f}-{interval['high']:.3f}"

    methods = ["gradient", "gradient_rerank", "fastif", "full"]
    methods += [f"ekfac_{name}" for name in peers["ekfac"]["dampings"]]
    phrases = [(f"| {cell(peers['lds'], method)} |", "lds_peers.json") for method in methods]
    sweep = peers["index_damping_sweep"]
    for view, name in (("gradient", "raw"), ("gradient_normalized", "normalised")):
        cells = " | ".join(f"{run['lds'][view]:.3f}" for run in sweep.values())
        phrases.append((f"| {name} | {cells} |", "lds_peers.json"))
    chosen, default = peers["held_out"]["chosen"], peers["held_out"]["default"]
    ekfac = f"ekfac_{peers['ekfac_best_damping']}"
    phrases += [
        (f"| {label} | {cell(run, method)} |", "lds_peers.json")
        for label, run, method in (
            (f"index at damping {peers['index_best_damping']['gradient']}, raw", chosen, "gradient"),
            (
                f"index at damping {peers['index_best_damping']['gradient']}, normalised",
                chosen,
                "gradient_normalized",
            ),
            ("EK-FAC at its chosen damping", chosen, ekfac),
            ("index at the default damping, raw", default, "gradient"),
            ("index at the default damping, normalised", default, "gradient_normalized"),
            ("index at the default damping, fast rerank", default, "gradient_rerank"),
        )
    ]
    lissa, points = peers["lds"]["seconds"], peers["summary"]["lds_test_points"]
    phrases.append(
        (
            f"fastif took {lissa['fastif']:,.0f} s for the {points} points (the LiSSA and its 1,000 "
            f"candidates) and full {lissa['full']:.0f} s more",
            "lds_peers.json",
        )
    )
    seconds = peers["ekfac"]["seconds"]
    scoring = [value for name, value in seconds.items() if name.startswith("scores_")]
    phrases.append(
        (
            f"Kronfluence's factors took {seconds['factors']:.0f} s and each damping's scores "
            f"{min(scoring):.0f}-{max(scoring):.0f} s",
            "lds_peers.json",
        )
    )
    agreement = peers["spearman_with_gradient_scores"].values()
    phrases.append(
        (f"(mean Spearman over all rows {min(agreement):.2f}-{max(agreement):.2f}", "lds_peers.json")
    )
    seconds = peers["lds"]["seconds"]["gradient"]
    phrases.append((f"scored the {points} points in {seconds:.1f} s", "lds_peers.json"))
    return phrases


PROJECTION_ROWS = {
    "uniform 16": "uniform 16 (the earlier default)",
    "share^1": "share^1",
    "share^0.5": "share^0.5",
    "uniform 32": "uniform 32 (4x bytes)",
}
"""The README's rows of the LDS of the index's variants: ``lds_projections.json``'s names -> the README's."""


def _projection_phrases() -> list[tuple[str, str]]:
    """The README's LDS of the index's projection and curvature variants: both tables (selection and
    held-out points), the share ranks and the ranges its bullets quote, from ``lds_projections.json``."""
    run = _results("lds_projections.json")
    lds, dampings, views = run["lds"], ("0.1", "1", "5"), ("raw", "normalized")

    def value(side: str, name: str, damping: str, view: str) -> float:
        return lds[side][f"{name}, damping {damping}, {view}"]["lds"]

    phrases = []
    for side in ("selection", "held_out"):
        for name, label in PROJECTION_ROWS.items():
            cells = " | ".join(f"{value(side, name, d, v):.3f}" for v in views for d in dampings)
            phrases.append((f"| {label} | {run['dims'][name]:,} | {cells} |", "lds_projections.json"))
    for name in ("share^1", "share^0.5"):
        phrases.append((f"`{name}` {run['ranks'][name]}", "lds_projections.json"))
    sides = list(lds)
    share = [
        value(s, n, d, v) - value(s, "uniform 16", d, v)
        for s in sides
        for n in ("share^1", "share^0.5")
        for d in dampings
        for v in views
    ]
    wide = [
        value(s, "uniform 32", d, "raw") - value(s, "uniform 16", d, "raw") for s in sides for d in dampings
    ]
    lower = {
        v: [
            value(s, "uniform 16", d, v) - value(s, "uniform 16", "5", v) for s in sides for d in ("0.1", "1")
        ]
        for v in views
    }
    phrases += [
        (f"move the LDS by {min(share):.3f} to +{max(share):.3f}", "lds_projections.json"),
        (f"(rank 32) gains {min(wide):.3f}-{max(wide):.3f} raw", "lds_projections.json"),
        (
            f"+{min(lower['raw']):.3f} to +{max(lower['raw']):.3f} raw and +{min(lower['normalized']):.3f} "
            f"to +{max(lower['normalized']):.3f} normalised",
            "lds_projections.json",
        ),
        (
            f"LDS difference {max(run['default_variant_minus_index'].values()):g} on both point sets",
            "lds_projections.json",
        ),
    ]
    return phrases


def _exact_curvature_phrases() -> list[tuple[str, str]]:
    """The README's LDS of the exact influence and the index's recall against it, from
    ``exact_curvature.json``."""
    run = _results("exact_curvature.json")
    lds, agreement = run["lds"], run["index_against_exact"]
    phrases = []
    for name, label in (("empirical_fisher", "empirical Fisher"), ("gauss_newton", "Gauss-Newton")):
        cells = " | ".join(
            f"{lds[side][f'{name}, damping {d}']['lds']:.3f}"
            for side in ("selection", "held_out")
            for d in ("0.1", "1", "5")
        )
        phrases.append((f"| {label} | {cells} |", "exact_curvature.json"))
    for damping, shown in (("5", "damping 5 (default)"), ("0.1", "damping 0.1")):
        for name, label in (("empirical_fisher", "empirical Fisher"), ("gauss_newton", "Gauss-Newton")):
            row = agreement[f"index at damping {damping} vs exact {name}"]
            cells = " | ".join(
                f"{row[key]:.2f}"
                for key in ("recall_at_100_helpful", "recall_at_100_harmful", "spearman_all")
            )
            phrases.append((f"| {shown} vs exact {label} | {cells} |", "exact_curvature.json"))
    phrases.append((f"{run['gram_seconds']:.0f} s on 2 CPU cores", "exact_curvature.json"))
    variants = run["variants_against_exact"]
    for name, label in (
        ("uniform 16", "uniform 16 (the earlier index)"),
        ("share^1", "share^1"),
        ("share^0.5", "share^0.5"),
        ("uniform 32", "uniform 32 (4x bytes)"),
    ):
        cells = " | ".join(
            f"{variants[f'{name}, damping {d} vs exact empirical_fisher'][key]:.2f}"
            for d in ("5", "0.1")
            for key in ("recall_at_100_helpful", "recall_at_100_harmful")
        )
        phrases.append((f"| {label} | {cells} |", "exact_curvature.json"))
    sampled = run["sampled_curvature"]
    for rows in ("250", "500", "1000"):
        cells = " | ".join(
            f"{sampled[c][d][rows][key]['recall_at_100_helpful']:.2f} / "
            f"{sampled[c][d][rows][key]['recall_at_100_harmful']:.2f}"
            for d in ("5", "1")
            for c in ("empirical_fisher", "gauss_newton")
            for key in ("vs_every_row", "between_two")
        )
        phrases.append((f"| {int(rows):,} | {cells} |", "exact_curvature.json"))
    agreement = _results("gradient_index.json")["rerank_sweep"]["reference_agreement"]
    phrases.append(
        (
            f"the {agreement['recall_at_100_helpful']:.2f} / {agreement['recall_at_100_harmful']:.2f} that "
            "`gradient_index.py`'s two 500-row Hessian references reach",
            "gradient_index.json",
        )
    )
    return phrases + _rerank_against_exact_phrases(run) + _top_variant_phrases(run)


def _top_variant_phrases(run: dict) -> list[tuple[str, str]]:
    """The README's ``top`` variants (the grid coordinates of largest second moment, the default) against
    every exact reference and by LDS, beside the earlier default, from ``exact_curvature.json`` (and
    ``lds_projections.json`` for rank 32's LDS)."""

    def cell(found: dict) -> str:
        return (
            f"{found['recall_at_100_helpful']:.2f} / {found['recall_at_100_harmful']:.2f} "
            f"({found['spearman_all']:.2f})"
        )

    variants, hessian = run["variants_against_exact"], run["hessian"]["against_hessian"]
    source = "exact_curvature.json"
    phrases = []
    for name, label, width, bytes_per_row, at_hessian in (
        ("uniform 16", "uniform 16 (the earlier default)", 3360, 4 * 3360, "index"),
        (
            "top 3360 of rank 64",
            "top 3,360 of rank 64 (the default)",
            3360,
            4 * 3360,
            "top 3360 of rank 64: index",
        ),
        (
            "top 6720 of rank 64",
            "top 6,720 of rank 64, in float16",
            6720,
            2 * 6720,
            "top 6720 of rank 64: index",
        ),
        ("uniform 32", "uniform 32", 13376, 4 * 13376, None),
    ):
        assert len(run["variant_widths"][name]) == 14 and sum(run["variant_widths"][name]) == width
        cells = " | ".join(
            cell(variants[f"{name}, damping 5 vs exact {curvature}"])
            for curvature in ("empirical_fisher", "gauss_newton")
        )
        against = cell(hessian[at_hessian]) if at_hessian else "-"
        phrases.append((f"| {label} | {width:,} | {bytes_per_row:,} | {cells} | {against} |", source))
    lds, twenty = run["lds"], run["hessian"]["lds"]
    top = "top 3360 of rank 64"
    projections = _results("lds_projections.json")["lds"]
    today = " | ".join(
        f"{lds[side]['gradient']['lds']:.3f} | {projections[side]['uniform 16, damping 0.1, raw']['lds']:.3f}"
        for side in ("selection", "held_out")
    )
    phrases.append(
        (f"| uniform 16 (the earlier default) | {today} | {twenty['gradient']['lds']:.3f} |", source)
    )
    cells = " | ".join(
        f"{lds[side][f'{top}, damping {d}']['lds']:.3f}"
        for side in ("selection", "held_out")
        for d in ("5", "0.1")
    )
    phrases.append(
        (
            f"| top 3,360 of rank 64 (the default) | {cells} | {twenty[f'{top}, damping 5']['lds']:.3f} |",
            source,
        )
    )
    fast = hessian[f"{top}: rerank_250"]
    phrases.append(
        (
            f"{fast['recall_at_100_helpful']:.2f} / {fast['recall_at_100_harmful']:.2f} "
            "against the exact Hessian (its",
            source,
        )
    )
    rank32 = " / ".join(
        f"{projections['selection'][f'uniform 32, damping {d}, raw']['lds']:.3f}" for d in ("5", "0.1")
    )
    held32 = " / ".join(
        f"{projections['held_out'][f'uniform 32, damping {d}, raw']['lds']:.3f}" for d in ("5", "0.1")
    )
    phrases.append((f"({rank32} on the selection, {held32} held out,", "lds_projections.json"))
    check = run["top_variant_check"]
    phrases.append((f"to a relative {check['max_relative_difference']:.0e}", source))
    phrases.append((f"{check['seconds']:.0f} s to build on 2 CPU cores", source))
    widths = run["variant_widths"][top]
    phrases.append(
        (f"intermediate layer gets {widths[4]} of the 3,360 and layer 5's output layer {widths[11]}", source)
    )
    return phrases


def _rerank_against_exact_phrases(run: dict) -> list[tuple[str, str]]:
    """The README's fast rerank against the noise-free references of ``exact_curvature.json``: by ``s_test``
    and damping against both exact curvatures, and every method against the exact Hessian."""

    def pair(found: dict) -> str:
        return f"{found['recall_at_100_helpful']:.2f} / {found['recall_at_100_harmful']:.2f}"

    reranks = run["rerank_against_exact"]
    phrases = []
    for variant, damping, label in (
        ("uniform 16", "5", "rank 16 (the earlier default), damping 5"),
        ("uniform 16", "1", "rank 16, damping 1"),
        ("uniform 16", "0.1", "rank 16, damping 0.1"),
        ("uniform 32", "5", "rank 32, damping 5"),
    ):
        cells = " | ".join(
            pair(reranks[f"{variant} s_test, damping {damping} vs exact {curvature}"][part])
            for curvature in ("empirical_fisher", "gauss_newton")
            for part in ("rerank_250", "every_row")
        )
        phrases.append((f"| {label} | {cells} |", "exact_curvature.json"))
    hessian = run["hessian"]["against_hessian"]
    for key, label in (
        ("index", "the index alone"),
        ("rerank_250", "fast rerank (250 per side)"),
        ("rerank, every row", "its `s_test` on every row"),
        ("exact empirical_fisher", "exact empirical Fisher"),
        ("exact gauss_newton", "exact Gauss-Newton"),
    ):
        spearman = f"{hessian[key]['spearman_all']:.2f}" if "spearman_all" in hessian[key] else "-"
        phrases.append((f"| {label} | {pair(hessian[key])} | {spearman} |", "exact_curvature.json"))
    lds = {name: row["lds"] for name, row in run["hessian"]["lds"].items()}
    phrases += [
        (
            f"(Hessian {lds['exact hessian, damping 5']:.3f}, Gauss-Newton "
            f"{lds['exact gauss_newton, damping 5']:.3f}, empirical Fisher "
            f"{lds['exact empirical_fisher, damping 5']:.3f}; the index {lds['gradient']:.3f},",
            "exact_curvature.json",
        ),
        (
            f"({run['hessian']['scan_seconds']:.0f} s for the {run['hessian']['points']})",
            "exact_curvature.json",
        ),
        (
            f"relative {run['rerank_check']['max_relative_difference']:.0e}".replace("e-0", "e-"),
            "exact_curvature.json",
        ),
    ]
    return phrases


def _application_phrases() -> list[tuple[str, str]]:
    """The README's augmentation table and shift, and its simulatability numbers."""
    augmentation = _results("augmentation.json")
    shift = augmentation["shift"]
    phrases = [
        (
            f"It scores {shift['unseen_phrases_accuracy']:.3f} on 1,000 unseen short rows and "
            f"{shift['test_accuracy']:.3f} on 672 dev sentences",
            "augmentation.json",
        )
    ]
    simulatability = _results("simulatability.json")
    for variant in ("raw", "normalized", "raw_model_labels"):  # the simulatability table's rows
        deltas = simulatability["variants"][variant]["deltas"]
        strategies = ("helpful", "random", "same_label", "harmful")
        cells = " | ".join(f"{deltas[f'simulatability_delta_{name}']:+.3f}" for name in strategies)
        phrases.append((f"| {cells} |", "simulatability.json"))
    beyond = simulatability["variants"]["raw"]["helpful_over_same_label"]
    phrases.append(
        (
            f"helpful rows add {beyond['mean']:+.3f} (95% interval +-{beyond['ci_halfwidth']:.3f}, paired "
            f"over the {simulatability['config']['test_points']} points; better on "
            f"{beyond['share_of_points']:.0%} of them)",
            "simulatability.json",
        )
    )
    beyond = simulatability["variants"]["normalized"]["helpful_over_same_label"]
    phrases.append(
        (
            f"normalised view's {beyond['mean']:+.3f} (+-{beyond['ci_halfwidth']:.3f}; better on "
            f"{beyond['share_of_points']:.0%} of the points)",
            "simulatability.json",
        )
    )
    for variant in ("raw", "normalized", "raw_command_defaults"):  # the table's rows, in points
        summary = augmentation["variants"][variant]["summary"]
        deltas = [summary[f"augmentation_delta_{side}"] * 100 for side in ("helpful", "random", "anchors")]
        cells = " | ".join(f"{value:+.2f}" for value in deltas)
        phrases.append((f"| {cells} | {summary['helpful_rows_misclassified']:.0%} |", "augmentation.json"))
    return phrases


def _curvature_phrases(curvature: dict) -> list[tuple[str, str]]:
    """The README's Fisher-against-Hessian sentence, from the trained (longest) run of each family."""
    longest = max(run["epochs"] for run in curvature["runs"])
    runs = {run["family"]: run for run in curvature["runs"] if run["epochs"] == longest}

    def span(run: dict, name: str, digits: int) -> str:
        values = [sentence[f"{name}_spearman"] for sentence in run["sentences"]]
        return f"{min(values):.{digits}f}-{max(values):.{digits}f}"

    bert, gpt2 = runs["bert"], runs["gpt2"]
    return [
        (
            f"a tiny BERT trained to {bert['train_accuracy']:.0%} accuracy the Fisher ranks all rows at "
            f"Spearman {span(bert, 'fisher', 3)} and the exact Gauss-Newton matrix (the bound of K-FAC, "
            f"EK-FAC and any sampled Fisher) at {span(bert, 'ggn', 3)}; on a tiny GPT-2 trained to "
            f"{gpt2['train_accuracy']:.0%} they fall to {span(gpt2, 'fisher', 2)} and "
            f"{span(gpt2, 'ggn', 2)}, "
            f"because its Hessian has negative curvature (eigenvalue {gpt2['hessian_eigen_min']:.2f}) and a "
            f"top eigenvalue of {gpt2['hessian_eigen_max']:.0f} against the Gauss-Newton's "
            f"{gpt2['ggn_eigen_max']:.0f}",
            "curvature.json",
        )
    ]


@pytest.mark.parametrize(("phrase", "source"), _quoted_numbers())
def test_the_readmes_numbers_are_the_results_files(phrase, source):
    """Each measured number the README quotes is rendered here from the JSON its benchmark wrote: a rerun
    that moves a number fails this test until the README says the new one."""
    flat = " ".join(README.split())
    assert " ".join(phrase.split()) in flat, f"README should say {phrase!r} (benchmarks/results/{source})"


def test_the_generated_cli_reference_is_up_to_date():
    """``docs/cli.md`` is what ``python -m cli.reference`` writes from today's Typer app and settings."""
    from cli.reference import REFERENCE, reference_markdown

    assert REFERENCE.read_text() == reference_markdown(), (
        "run `python -m cli.reference` and commit docs/cli.md"
    )
    assert (
        "## `influence index build`" in REFERENCE.read_text()
        and "`INFLUENCE_MAX_JOBS`" in REFERENCE.read_text()
    )


def test_the_supported_families_table_is_the_benchmarks_own():
    """The README's families table is what ``python benchmarks/architectures.py --table`` renders from
    ``architectures.json`` (the test list's families, measured): rerun and paste, never edit by hand."""
    from benchmarks.architectures import families_table

    table = families_table(_results("architectures.json"))
    assert table in README, "README: paste `python benchmarks/architectures.py --table`"


def test_the_scale_table_is_the_benchmarks_own():
    """The README's Scale table is what ``python benchmarks/scale.py --table`` renders from ``scale.json``
    (every storage on SST-2 and on the synthetic sizes, measured): rerun and paste, never edit by hand."""
    from benchmarks.scale import scale_table

    table = scale_table(_results("scale.json"))
    assert table in README, "README: paste `python benchmarks/scale.py --table`"
