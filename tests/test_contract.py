"""One contract: each default and bound defined once (library, API, CLI, client agree), the package
boundaries hold, and the model card describes exactly the rows trained on."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
import typing
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import app
from interpret.attacks import ATTACK_METHODS
from interpret.checkpoint import load_checkpoint
from interpret.config import (
    ATTACK_PARAMETERS,
    FASTIF_PRESET,
    SALIENCY_PARAMETERS,
    AttackMethod,
    EvaluationConfig,
    GradientIndexConfig,
    LissaConfig,
    QueryConfig,
    SaliencyMethod,
)
from interpret.saliency import SALIENCY_METHODS
from service import schemas

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("interpret", "index", "workers", "engine", "tasks", "service", "clients", "cli")


def test_request_schemas_take_defaults_and_bounds_from_the_library_configs():
    """The REST request models are the library's configs (subclasses, or the configs as fields): every
    config field is served with the library's default, bounds and description, and nothing is added but
    the request's own fields."""

    def agrees(model, config_class, own: set[str] = frozenset()) -> None:
        assert issubclass(model, config_class), (model, config_class)
        assert set(model.model_fields) == set(config_class.model_fields) | own, model
        for name, spec in config_class.model_fields.items():
            field = model.model_fields[name]
            assert field.default == spec.default and field.description == spec.description, (model, name)
            assert field.metadata == spec.metadata, (model, name)  # the ge / gt / le bounds

    agrees(schemas.InfluenceRequest, QueryConfig, {"inputs"})
    agrees(schemas.EvaluateRequest, EvaluationConfig, {"task", "inputs", "methods", "anchors", "pool"})
    lissa = schemas.InfluenceRequest.model_fields["lissa"]
    assert lissa.annotation is LissaConfig and lissa.get_default(call_default_factory=True) == FASTIF_PRESET
    gradient = schemas.JobRequest.model_fields["gradient"].annotation
    assert typing.get_args(gradient) == (GradientIndexConfig, type(None))
    for registry, requests, names in (
        (SALIENCY_PARAMETERS, schemas.SALIENCY_REQUESTS, SaliencyMethod),
        (ATTACK_PARAMETERS, schemas.ATTACK_REQUESTS, AttackMethod),
    ):
        assert registry.keys() == requests.keys() == set(typing.get_args(names))
        for method, params_class in registry.items():
            parameters = requests[method].model_fields["parameters"]
            assert parameters.annotation is params_class, method
            assert parameters.get_default(call_default_factory=True) == params_class(), method
    api_fields = {name for config in (QueryConfig, LissaConfig) for name in config.model_fields}
    assert not api_fields & {"divergence_bound", "score_batch_size"}  # internal margins stay constants


def test_library_functions_cli_and_clients_use_the_same_defaults():
    for registry, functions in ((SALIENCY_PARAMETERS, SALIENCY_METHODS), (ATTACK_PARAMETERS, ATTACK_METHODS)):
        for method, params_class in registry.items():
            signature = inspect.signature(functions[method]).parameters
            for name, spec in params_class.model_fields.items():
                assert signature[name].default == spec.default, (method, name)
    from cli.commands import query
    from clients import InfluenceClient, influence_request

    options = inspect.signature(query).parameters
    assert options["k"].default == QueryConfig.default("k") and options["top"].default == QueryConfig.default(
        "top"
    )
    for name in ("recursion_depth", "damping", "scale", "seed"):
        assert options[name].default == getattr(FASTIF_PRESET, name)
    assert options["lissa_batch_size"].default == FASTIF_PRESET.batch_size
    for function in (influence_request, InfluenceClient.influence):
        parameters = inspect.signature(function).parameters
        assert parameters["k"].default == QueryConfig.default("k") and parameters[
            "top"
        ].default == QueryConfig.default("top")
    for name in ("method", "rerank", "solver", "cg_rows"):
        assert options[name].default == QueryConfig.default(name), name
    from cli.applications import correct, influence_map_command
    from cli.evaluate import lds, loo
    from cli.indexes import index_build

    for command, names in (
        (loo, ("m", "damping")),
        (lds, ("fraction", "damping")),
        (correct, ("seeds", "top")),
    ):
        for name in names:
            assert inspect.signature(command).parameters[name].default == EvaluationConfig.default(name), name
    assert inspect.signature(influence_map_command).parameters["top"].default == EvaluationConfig.default(
        "top"
    )
    build_options = inspect.signature(index_build).parameters
    for name, spec in GradientIndexConfig.model_fields.items():
        if name != "factory":
            assert build_options[name].default == spec.default, name


def test_the_readme_and_the_demo_show_the_gradient_method(tmp_path, monkeypatch):
    """The README shows the gradient method; the demo, run from empty artifacts (its training, index
    builds, query and server recorded, not run), builds both indexes and answers with the gradient one."""
    readme = (ROOT / "README.md").read_text()
    using = readme.split("## Using it")[1].split("\n## ")[0]
    rest = readme.split("## The REST service")[1].split("\n## ")[0]
    assert "index build --kind gradient" in using and "--method fastif" in using and "--rerank" in using
    assert "`method` (`gradient`" in rest and "index_kind=gradient" in rest
    import cli.commands
    import cli.indexes

    calls = []
    monkeypatch.setattr(cli.commands, "ARTIFACTS", tmp_path)
    for module, name in ((cli.commands, "train"), (cli.indexes, "index_build")):
        monkeypatch.setattr(module, name, lambda name=name, **options: calls.append((name, options)))
    for name in ("query", "serve"):
        monkeypatch.setattr(cli.commands, name, lambda name=name, **options: calls.append((name, options)))
    cli.commands.demo(max_examples=100, full=False, text="a fine film", port=8123)
    assert [name for name, _ in calls] == ["train", "index_build", "index_build", "query", "serve"]
    builds = [options for name, options in calls if name == "index_build"]
    assert [(b["kind"], b["out"]) for b in builds] == [
        ("knn", tmp_path / "index"),
        ("gradient", tmp_path / "gradient-index"),
    ]
    asked = dict(calls)["query"]
    assert asked["gradient_index"] == tmp_path / "gradient-index" and asked["text"] == "a fine film"
    assert dict(calls)["serve"]["port"] == 8123


def test_the_demo_rebuilds_a_cached_gradient_index_built_on_other_grids_than_the_default():
    """An index from before the default chose its coordinates from wider grids records no grid_rank (its
    grids are its rank's): the demo rebuilds it, so it shows the default; the default's own is kept."""
    from types import SimpleNamespace

    from cli.commands import _default_grids

    default = GradientIndexConfig()
    built = {"rank": default.rank, "grid_rank": default.basis_rank, "coordinates": 3360}
    assert _default_grids(SimpleNamespace(spec=built))
    assert not _default_grids(SimpleNamespace(spec={"rank": default.rank, "coordinates": None}))
    assert not _default_grids(SimpleNamespace(spec={**built, "grid_rank": default.rank}))
    assert not _default_grids(SimpleNamespace(spec={**built, "rank": 32}))


def _loaded_after(statement: str) -> set[str]:
    code = f"import sys, json; {statement}; print(json.dumps(sorted(sys.modules)))"
    output = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    return {name.split(".")[0] for name in json.loads(output.stdout)}


def test_light_modules_load_no_heavy_dependencies():
    heavy = {"torch", "transformers", "ray", "faiss", "datasets", "captum"}
    assert not _loaded_after("import clients") & heavy
    assert not _loaded_after("import service.schemas") & (heavy | {"fastapi", "httpx", "numpy"})
    assert "ray" not in _loaded_after("import service.errors")


def _imports(path: Path) -> set[str]:
    import ast

    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


ALLOWED = {
    "interpret": set(),
    "index": {"interpret"},
    "workers": {"interpret", "index"},  # a shard actor holds an index shard (workers.shards)
    "engine": {"interpret", "index", "workers"},
    "tasks": {"interpret", "index", "workers", "engine"},
    "service": {"interpret", "index", "workers", "engine", "tasks"},
    "clients": {"service", "tasks", "interpret"},
    "cli": {"interpret", "index", "workers", "engine", "tasks", "service", "clients"},
}
ONLY_IN = {"ray": "workers", "faiss": "index", "fastapi": "service", "uvicorn": "cli"}


def test_dependencies_point_one_way_and_heavy_libraries_stay_in_their_package():
    problems = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            imported = _imports(path)
            ours = imported & set(PACKAGES) - {package}
            problems += [f"{path.relative_to(ROOT)} imports {p}" for p in sorted(ours - ALLOWED[package])]
            for library, home in ONLY_IN.items():
                if (
                    library in imported
                    and package != home
                    and not (library == "fastapi" and package == "cli")
                ):
                    problems.append(f"{path.relative_to(ROOT)} imports {library} (only {home} may)")
    assert problems == []


def test_the_http_service_is_at_most_four_floors_and_holds_no_evaluation():
    """Inside ``service/`` the longest chain of imports (at any level of a module) is at most 4 modules
    (app -> core -> limits -> settings), and the evaluation tasks live below it, in ``tasks/``."""
    import ast
    import functools

    modules = {path.stem: path for path in (ROOT / "service").glob("*.py") if path.stem != "__init__"}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        used = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("service."):
                used.add(node.module.split(".")[1])
            elif isinstance(node, ast.ImportFrom) and node.module == "service":
                used |= {alias.name for alias in node.names}
        graph[name] = used & set(modules)

    @functools.cache
    def floors(name: str) -> int:
        return 1 + max((floors(used) for used in graph[name]), default=0)

    assert max(floors(name) for name in graph) <= 4, {name: floors(name) for name in graph}
    assert not {"evaluation", "applications", "plots"} & set(modules)


def test_train_help_renders():
    result = CliRunner().invoke(app, ["train", "--help"])
    assert result.exit_code == 0, result.output
    assert "hub:NAME[/CFG]:SPLIT" in result.output


def test_the_card_and_the_loaded_data_describe_exactly_the_rows_trained_on(tiny_dir, data_dir, tmp_path):
    out = tmp_path / "model"
    arguments = ["train", "--base-model", str(tiny_dir), "--train", str(data_dir / "train.tsv")]
    arguments += ["--eval", str(data_dir / "dev.tsv"), "--out", str(out), "--max-examples", "40"]
    arguments += ["--tracked-layers", "1", "--batch-size", "16"]
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 0, result.output
    card = json.loads((out / "card.json").read_text())
    assert card["data_spec"]["max_examples"] == 40 and card["report"]["train_examples"] == 40
    checkpoint = load_checkpoint(out)
    assert len(checkpoint.examples) == 40 and checkpoint.examples.fingerprint == card["data_fingerprint"]
    assert len(set(checkpoint.examples.ids)) == 40  # ids stay the file's row numbers

    card["data_spec"]["max_examples"] = None  # a card naming the whole file for a model trained on 40 rows
    (out / "card.json").write_text(json.dumps(card))
    with pytest.raises(ValueError, match="not the rows the model was trained on"):
        load_checkpoint(out)


def test_weight_decay_spares_biases_and_layer_norms(tiny_dir):
    from interpret.models import TrackedModel, load_classifier
    from interpret.training import parameter_groups

    tracked = TrackedModel(*load_classifier(str(tiny_dir)), tracked_layers=1)
    decayed, spared = parameter_groups(tracked, 0.005)
    names = {id(p): n for n, p in tracked.model.named_parameters()}
    assert decayed["weight_decay"] == 0.005 and spared["weight_decay"] == 0.0
    assert all(names[id(p)].endswith("weight") and "LayerNorm" not in names[id(p)] for p in decayed["params"])
    assert {names[id(p)] for p in spared["params"]} >= {"classifier.bias", "bert.pooler.dense.bias"}
    assert any("LayerNorm.weight" in names[id(p)] for p in spared["params"])
    assert len(decayed["params"]) + len(spared["params"]) == len(tracked.parameter_names)


def test_the_page_puts_html_into_the_document_only_through_its_one_escaping_helper():
    """``service/static/page.js`` builds every piece of HTML with the ``html`` tag (which escapes each value
    it interpolates) and inserts it only through ``render``/``append``, which refuse anything else: no
    ``innerHTML`` or ``insertAdjacentHTML`` elsewhere, and no hand-escaping to forget."""
    script = (ROOT / "service" / "static" / "page.js").read_text()
    assert script.count("innerHTML") == 1 and "{ element.innerHTML = checked(fragment); }" in script
    assert script.count("insertAdjacentHTML") == 1 and '("beforeend", checked(fragment))' in script
    assert "outerHTML" not in script and "document.write" not in script
    helpers = [line for line in script.splitlines() if "escapeHtml(" in line]
    assert len(helpers) == 2, helpers  # used only inside the html helpers (piece, joined)
