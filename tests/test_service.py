"""The REST service on the in-process backend (tiny model, no Ray): answers, limits, errors, cache, jobs,
clients. The same service over a Ray pool is tested in test_service_server.py and test_deployment.py."""

from __future__ import annotations

import asyncio
import shutil

import httpx
import numpy as np
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings

from clients import (
    AsyncInfluenceClient,
    AuthenticationError,
    BadRequestError,
    InfluenceClient,
    JobFailedError,
    NotFoundError,
    RateLimitedError,
    evaluate_request,
    influence_request,
)
from engine.pipeline import answer_query, local_engine
from interpret.config import FAST_RERANK
from interpret.influence import LissaConfig, QueryConfig
from service.app import create_app
from service.core import InfluenceService
from service.settings import Settings

QUERY = "the plot was good and fun"
LISSA = {"recursion_depth": 20, "batch_size": 4, "damping": 0.1, "scale": 20.0, "num_repetitions": 2}
BODY = {"inputs": [{"text": QUERY}], "k": 30, "top": 3, "lissa": LISSA}


@pytest.fixture(scope="module")
def settings(engine_dirs, tmp_path_factory) -> Settings:
    index_dir = tmp_path_factory.mktemp("service") / "index"
    shutil.copytree(engine_dirs[1], index_dir)  # index-build jobs rewrite it
    return Settings(
        _env_file=None,
        model_dir=engine_dirs[0],
        index_dir=index_dir,
        gradient_index_dir=index_dir.with_name("gradient-index"),
        workers=2,
        max_k=60,
        max_cg_rows=50,
        max_top=20,
        max_batch=4,
        max_input_tokens=16,
        max_recursion_depth=60,
        max_repetitions=2,
        max_body_bytes=4000,
        max_in_flight=2,
        deadline_s=120,
    )


@pytest.fixture(scope="module")
def service(settings):
    engine = local_engine(settings.model_dir, index_dir=settings.index_dir)
    service = InfluenceService(settings, engine)
    yield service
    service.shutdown()


@pytest.fixture(scope="module")
def http(settings, service):
    with TestClient(create_app(settings, service)) as client:
        yield client


def test_influence_answers_like_the_local_engine(http, settings):
    response = http.post("/v1/influence", json=BODY)
    assert response.status_code == 200, response.text
    result = response.json()["results"][0]
    quality = result["quality"]
    assert quality["candidates"] == 30 and quality["k"] == 30
    assert quality["cached_s_test"] is None  # whether someone asked before is not disclosed
    assert quality["lissa"]["workers"] is None and len(quality["lissa"]["norm_trace"]) == 2  # no names
    assert set(quality["timings_s"]) >= {"encode", "search", "s_test", "score", "total"}

    config = QueryConfig(k=30, top=3, lissa=LissaConfig(**LISSA))
    local = answer_query(local_engine(settings.model_dir, index_dir=settings.index_dir), QUERY, config=config)
    assert [e["id"] for e in result["helpful"]] == [e.id for e in local.helpful]
    assert [e["id"] for e in result["harmful"]] == [e.id for e in local.harmful]
    np.testing.assert_allclose(
        [e["score"] for e in result["helpful"]], [e.score for e in local.helpful], rtol=1e-4
    )
    assert result["prediction"]["label"] == local.predicted_label == result["label_used"]


def test_a_refined_query_reuses_s_test(http, service):
    first = http.post("/v1/influence", json={**BODY, "inputs": [{"text": "a dull and boring film"}]}).json()
    hits = service.cache.stats.hits
    refined = http.post(
        "/v1/influence", json={**BODY, "inputs": [{"text": "a dull and boring film"}], "top": 5}
    )
    refined = refined.json()
    assert service.cache.stats.hits == hits + 1
    assert refined["results"][0]["helpful"][:3] == first["results"][0]["helpful"]
    # issue 23: the hit is not disclosed, in its flag or in its timings (the solve's own time is reported)
    timings = [answer["results"][0]["quality"]["timings_s"] for answer in (first, refined)]
    assert timings[1]["s_test"] == timings[0]["s_test"] and timings[1]["total"] >= timings[1]["s_test"]
    other_seed = {**BODY, "inputs": [{"text": "a dull and boring film"}], "lissa": {**LISSA, "seed": 9}}
    assert http.post("/v1/influence", json=other_seed).status_code == 200
    assert service.cache.stats.hits == hits + 1


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"inputs": [{"text": QUERY}] * 5}, "INFLUENCE_MAX_BATCH"),
        ({"k": 61}, "INFLUENCE_MAX_K"),
        ({"k": None}, "a full scan scores all 96"),
        ({"method": "gradient"}, "method='gradient' needs a gradient index"),
        ({"rerank": 61}, "rerank is read by method='gradient'"),
        ({"normalize": True}, "normalize is read by method='gradient' without rerank"),
        ({"solver": "cg", "cg_rows": 51, "lissa": {"damping": 0.1}}, "INFLUENCE_MAX_CG_ROWS"),
        ({"top": 21}, "INFLUENCE_MAX_TOP"),
        ({"lissa": {**LISSA, "recursion_depth": 61}}, "lissa.recursion_depth=61"),
        ({"lissa": {**LISSA, "num_repetitions": 3}}, "lissa.num_repetitions=3"),
        ({"inputs": [{"text": "good " * 20}]}, "inputs[0].text tokens=22 exceeds"),
        (
            {"inputs": [{"text": QUERY, "label": 2}]},
            "inputs[0].label=2 is not a label of this model: use 0..1",
        ),
    ],
)
def test_each_limit_is_a_4xx_naming_the_field(http, change, named):
    response = http.post("/v1/influence", json={**BODY, **change})
    assert response.status_code == 422
    body = response.json()
    assert body["code"] == "limit_exceeded" and named in body["message"], body


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"inputs": []}, "inputs: List should have at least 1 item"),
        ({"inputs": [{"txt": QUERY}]}, "inputs.0.text: Field required"),
        ({**BODY, "lissa": {**LISSA, "damping": -1}}, "lissa.damping: Input should be greater than 0"),
        ({**BODY, "colour": "red"}, "colour: Extra inputs are not permitted"),
        ({**BODY, "method": "fast"}, "method: Input should be 'gradient', 'fastif' or 'full'"),
        ({**BODY, "rerank": 0}, "rerank: Input should be greater than or equal to 1"),
        ({**BODY, "solver": "newton"}, "solver: Input should be 'lissa', 'cg' or 'index'"),
    ],
)
def test_malformed_requests_name_the_field(http, body, named):
    response = http.post("/v1/influence", json=body)
    assert response.status_code == 422 and response.json()["code"] == "invalid_request"
    assert response.json()["message"].startswith(named), response.json()


def test_body_size_and_busy(http, service):
    huge = http.post(
        "/v1/predict", content=b"{" + b" " * 5000 + b"}", headers={"content-type": "application/json"}
    )
    assert huge.status_code == 413 and "INFLUENCE_MAX_BODY_BYTES" in huge.json()["message"]

    service.in_flight.count = service.in_flight.limit  # as if two requests were computing
    try:
        busy = http.post("/v1/predict", json={"inputs": [{"text": QUERY}]})
    finally:
        service.in_flight.count = 0
    assert busy.status_code == 429 and busy.headers["Retry-After"] == "5" and busy.json()["code"] == "busy"


def test_saliency_and_attacks_are_served_with_limits(http):
    for method in ("simple_gradient", "integrated_gradients", "smooth_gradient", "leave_one_out", "lime"):
        response = http.post("/v1/saliency", json={"text": QUERY, "method": method})
        assert response.status_code == 200, response.text
        body = response.json()
        assert abs(sum(body["scores"]) - 1) < 1e-6 and len(body["tokens"]) == len(body["word_ids"])
        assert body["label_explained"] == body["prediction"]["label"]
    gradients = http.post(
        "/v1/saliency", json={"text": QUERY, "method": "integrated_gradients", "parameters": {"steps": 50}}
    ).json()
    assert gradients["extra"]["completeness_gap"] < 0.05

    flipped = http.post("/v1/attack", json={"text": QUERY, "method": "hotflip"}).json()
    assert flipped["original"][0] == "[CLS]" and len(flipped["final"]) == 1
    assert flipped["success"] == (flipped["outputs_after"][0]["label"] != flipped["outputs_before"]["label"])
    reduced = http.post("/v1/attack", json={"text": QUERY, "method": "input_reduction"}).json()
    assert reduced["outputs_after"][0]["label"] == reduced["outputs_before"]["label"]
    assert len(reduced["final"][0]) <= len(reduced["original"])
    trigger = http.post(
        "/v1/attack",
        json={"text": QUERY, "method": "triggers", "parameters": {"num_tokens": 2, "iterations": 2}},
    ).json()
    assert trigger["extra"]["trigger"] and "held_out_error_rate_after" in trigger["extra"]

    for body, named in [
        ({"text": QUERY, "method": "lime", "parameters": {"num_samples": 257}}, "INFLUENCE_MAX_SAMPLES"),
        (
            {"text": QUERY, "method": "lime", "parameters": {"stepz": 3}},
            "lime.parameters.stepz: Extra inputs",
        ),
        (
            {"text": QUERY, "method": "integrated_gradients", "parameters": {"steps": 2.5}},
            "integrated_gradients.parameters.steps: Input should be a valid integer",
        ),
    ]:
        response = http.post("/v1/saliency", json=body)
        assert response.status_code == 422 and named in response.json()["message"], response.json()
    for body, named in [
        ({"text": QUERY, "method": "input_reduction", "target": 0}, "input_reduction.target: Extra inputs"),
        ({"text": QUERY, "method": "hotflip", "target": 2}, "target=2 is not a label"),
        (
            {"text": QUERY, "method": "hotflip", "parameters": {"candidates": 101}},
            "INFLUENCE_MAX_ATTACK_SEARCH",
        ),
        ({"text": QUERY, "method": "triggers", "parameters": {"held_out": 600}}, "INFLUENCE_MAX_TRIGGER_EX"),
        (
            {"text": QUERY, "text_pair": "fun", "method": "triggers"},
            "text_pair: this model was trained on single",
        ),
    ]:
        response = http.post("/v1/attack", json=body)
        assert response.status_code == 422 and named in response.json()["message"], response.json()


def test_predict_models_health_and_metrics(http):
    predictions = http.post(
        "/v1/predict", json={"inputs": [{"text": QUERY}, {"text": "dull and boring"}]}
    ).json()
    assert [p["label"] for p in predictions["predictions"]] == [1, 0]
    # transformers' LABEL_k placeholders read as "label k"
    assert [p["label_name"] for p in predictions["predictions"]] == ["label 1", "label 0"]
    model = http.get("/v1/models").json()["models"][0]
    assert model["labels"] == ["label 0", "label 1"]
    assert model["tracked_layers"] == 1 and model["workers"] == 1 and model["num_training_examples"] == 96
    assert model["index_manifest"]["count"] == 96 and model["tracked_parameters"] > 0
    bounds = model["parameter_limits"]  # what the page's forms offer: each parameter's bound on this server
    assert (bounds["k"], bounds["rerank"], bounds["top"], bounds["cg_rows"]) == (60, 60, 20, 50)
    assert bounds["steps"] == bounds["num_samples"] == model["limits"]["max_samples"]
    assert http.get("/healthz").json() == {"status": "ok"}
    ready = http.get("/readyz")
    assert ready.status_code == 200 and ready.json() == {
        "ready": True,
        "index_loaded": True,
        "training_data": True,
        "workers": 1,
        "workers_answering": 1,
    }
    metrics = http.get("/metrics").text
    assert 'influence_requests_total{route="/v1/predict",status="200"}' in metrics
    assert "/docs" in http.get("/").text and http.get("/openapi.json").status_code == 200
    assert f'<option value="{FAST_RERANK}" label="fast">' in http.get("/").text  # the page's fast rerank
    script = http.get("/static/page.js")  # the page's own script and style, served as they are
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert http.get("/static/page.css").status_code == 200
    missing = http.get("/static/nothing.js")
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"


def test_jobs_through_the_sync_client(http):
    client = InfluenceClient(http=http, backoff_s=0.01)
    request = influence_request([QUERY, "dull and boring"], k=20, top=2, lissa=LISSA)
    submitted = client.submit_job(request)
    assert submitted.state in ("queued", "running", "succeeded")
    done = client.wait_job(submitted.id, poll_s=0.05, timeout=120, progress=False)
    assert done.progress == 1.0 and len(done.result.results) == 2
    with pytest.raises(NotFoundError, match="already fetched"):
        client.job(submitted.id)  # a finished job is handed out once

    build = client.wait_job(
        client.submit_job(kind="index_build").id, poll_s=0.05, timeout=120, progress=False
    )
    assert build.result.index_manifest["count"] == 96
    with pytest.raises(BadRequestError, match="INFLUENCE_MAX_K"):
        client.submit_job(influence_request(QUERY, k=1000))

    diverging = {**LISSA, "recursion_depth": 60, "damping": 0.01, "scale": 1e-3}
    failing = client.submit_job(influence_request(QUERY, k=20, lissa=diverging))
    with pytest.raises(JobFailedError, match="increase scale") as failure:
        client.wait_job(failing.id, poll_s=0.05, timeout=120, progress=False)
    assert failure.value.code == "lissa_diverged"  # the code the endpoint itself would answer with


def test_evaluate_jobs_check_their_inputs_and_return_typed_reports(http, settings):
    """loo on the convex head, an influence map and an audit as jobs; bad runs are 422s naming the field."""
    client = InfluenceClient(http=http, backoff_s=0.01)
    labelled = [{"text": QUERY, "label": 1}, {"text": "dull and boring", "label": 0}]
    loo = client.submit_job(evaluate_request("loo", labelled, m=3, damping=0.05), kind="evaluate")
    report = client.wait_job(loo.id, poll_s=0.05, timeout=120, progress=False).result
    assert report.kind == "loo" and len(report.points) == 2 and len(report.points[0].actual) == 3
    assert report.summary["loo_pearson_head"] > 0.95
    mapped = client.submit_job(evaluate_request("influence_map", [QUERY], top=2), kind="evaluate")
    graph = client.wait_job(mapped.id, poll_s=0.05, timeout=120, progress=False).result
    assert graph.kind == "influence_map" and len(graph.edges) == 4 and graph.nodes[0].kind == "test"
    audit = client.submit_job(evaluate_request("audit", limit=5), kind="evaluate")
    ranked = client.wait_job(audit.id, poll_s=0.05, timeout=120, progress=False).result
    assert ranked.kind == "audit" and len(ranked.ranked) == 5
    assert ranked.rank_by == "loss"  # the default: it found the most flipped labels (README)
    assert [r.loss for r in ranked.ranked] == sorted((r.loss for r in ranked.ranked), reverse=True)
    audit = client.submit_job(evaluate_request("audit", limit=5, rank_by="self_influence"), kind="evaluate")
    ranked = client.wait_job(audit.id, poll_s=0.05, timeout=120, progress=False).result
    assert [r.self_influence for r in ranked.ranked] == sorted(
        (r.self_influence for r in ranked.ranked), reverse=True
    )
    simulated = client.submit_job(
        evaluate_request("simulatability", [QUERY], top=2, simulator_rows=20), kind="evaluate"
    )
    simulation = client.wait_job(simulated.id, poll_s=0.05, timeout=120, progress=False).result
    assert simulation.kind == "simulatability" and len(simulation.before) == 1
    assert {name: len(values) for name, values in simulation.after.items()} == {
        "helpful": 1,
        "random": 1,
        "same_label": 1,
        "harmful": 1,
    }
    # the audit's gradient shards live in the scratch folder, never beside the served indexes (issue 23)
    assert list((settings.job_scratch_dir / "audit-gradients.shards").glob("shard-*.npy"))
    assert not [path for path in settings.index_dir.parent.iterdir() if "audit" in path.name]
    with pytest.raises(BadRequestError, match=r"inputs\[0\]\.label"):
        client.submit_job(evaluate_request("loo", [QUERY]), kind="evaluate")
    with pytest.raises(BadRequestError, match="needs test points"):
        client.submit_job(evaluate_request("lds_head"), kind="evaluate")
    with pytest.raises(BadRequestError, match="INFLUENCE_ALLOW_FULL_SCAN"):  # recall: a full scan
        client.submit_job(evaluate_request("recall", labelled), kind="evaluate")
    response = http.post("/v1/jobs", json={"kind": "evaluate", "evaluate": {"task": "loo", "m": 0}})
    assert response.status_code == 422 and "m" in response.text
    with pytest.raises(BadRequestError, match="none is loaded"):  # this server has no gradient index
        client.submit_job(
            evaluate_request("augmentation", labelled, anchors=labelled, pool=labelled), kind="evaluate"
        )
    with pytest.raises(BadRequestError, match="takes no anchors or pool"):
        client.submit_job(evaluate_request("influence_map", [QUERY], pool=labelled), kind="evaluate")
    with pytest.raises(BadRequestError, match="not by task=loo"):
        client.submit_job(evaluate_request("loo", labelled, normalize=True), kind="evaluate")
    with pytest.raises(BadRequestError, match="normalised view, and none is loaded"):
        client.submit_job(evaluate_request("influence_map", [QUERY], normalize=True), kind="evaluate")


def test_a_gradient_index_job_makes_gradient_the_default_method(settings, engine_dirs, tmp_path):
    """Build the gradient index as a job, then the same request is answered by it, with its quality."""
    settings = settings.model_copy(update={"gradient_index_dir": tmp_path / "gradient-index"})
    service = InfluenceService(settings, local_engine(settings.model_dir, index_dir=settings.index_dir))
    with TestClient(create_app(settings, service)) as http:
        client = InfluenceClient(http=http, backoff_s=0.01)
        before = client.influence(QUERY, k=30, top=3, lissa=LISSA).results[0].quality
        assert before.method == "fastif" and before.gradient_index is None
        with pytest.raises(BadRequestError, match=r"gradient\.factory=.nope. is not a FAISS factory string"):
            client.submit_job(kind="index_build", index_kind="gradient", gradient={"factory": "nope"})
        gradient = {"rank": 4, "damping": 0.1, "chunk_rows": 40}
        job = client.submit_job(kind="index_build", index_kind="gradient", gradient=gradient)
        built = client.wait_job(job.id, poll_s=0.05, timeout=120, progress=False)
        assert (
            built.result.index_manifest["count"] == 96 and built.result.index_manifest["kind"] == "gradient"
        )
        with pytest.raises(BadRequestError, match="does not use k, lissa"):  # fastif's knobs: unused now
            client.influence(QUERY, k=30, top=3, lissa=LISSA)
        after = client.influence(QUERY, top=3).results[0]
        quality = after.quality
        assert quality.method == "gradient" and quality.candidates == 96 and quality.lissa is None
        assert quality.gradient_index.rank == 4 and quality.gradient_index.preconditioner == "fisher"
        assert all(e.score < 0 for e in after.helpful) and all(e.score > 0 for e in after.harmful)
        assert quality.gradient_index.projection == "kfac" and quality.gradient_index.fit_rows == 96
        normalized = client.influence(QUERY, top=3, normalize=True).results[0]
        assert normalized.quality.normalize and not quality.normalize
        assert all(-1 <= e.score < 0 for e in normalized.helpful)
        assert all(0 < e.score <= 1 for e in normalized.harmful)
        with pytest.raises(BadRequestError, match="normalize is read by method='gradient' without rerank"):
            client.influence(QUERY, top=3, rerank=5, normalize=True)
        reranked = client.influence(QUERY, top=3, rerank=5).results[0].quality
        assert reranked.method == "gradient" and reranked.rerank == 5 and reranked.solver == "index"
        assert reranked.candidates <= 10 and reranked.lissa is None  # the index's curvature: no LiSSA
        lissa = client.influence(QUERY, top=3, lissa=LISSA, rerank=5, solver="lissa").results[0].quality
        assert lissa.solver == "lissa" and lissa.lissa is not None
        fastif = client.influence(QUERY, k=30, top=3, lissa=LISSA, method="fastif").results[0].quality
        assert fastif.method == "fastif" and fastif.candidates == 30
        rows = [{"text": text, "label": label} for text, label in (("fine and warm", 1), ("a dull mess", 0))]
        pool = [*rows, {"text": "bright , funny", "label": 1}, {"text": "tedious", "label": 0}]
        shifted = evaluate_request(
            "augmentation", rows, anchors=rows, pool=pool, anchor_count=2, top=1, seeds=1
        )
        augmented = client.wait_job(client.submit_job(shifted, kind="evaluate").id, poll_s=0.05, timeout=120)
        assert augmented.result.kind == "augmentation" and augmented.result.anchors == [[0, 1]]
        assert set(augmented.result.deltas) == {"helpful", "random", "anchors"}
        normalized = evaluate_request("simulatability", [QUERY], top=2, simulator_rows=20, normalize=True)
        simulation = client.wait_job(
            client.submit_job(normalized, kind="evaluate").id, poll_s=0.05, timeout=120
        )
        assert simulation.result.kind == "simulatability" and len(simulation.result.after["helpful"]) == 1
        unlabelled = [*pool, {"text": "no label here"}]
        with pytest.raises(BadRequestError, match=r"pool\[4\]\.label"):
            client.submit_job(
                evaluate_request("augmentation", rows, anchors=rows, pool=unlabelled), kind="evaluate"
            )
        models = client.models().models[0]
        assert models.gradient_index_manifest["spec"]["rank"] == 4
        assert quality.gradient_index.storage == "float32" and quality.gradient_index.storage_recall is None
        with pytest.raises(
            BadRequestError, match=r"gradient\.storage='ivf-pq' .* at least that many rows, got 96"
        ):
            client.submit_job(kind="index_build", index_kind="gradient", gradient={"storage": "ivf-pq"})
        job = client.submit_job(
            kind="index_build", index_kind="gradient", gradient={**gradient, "storage": "sq8"}
        )
        assert client.wait_job(job.id, poll_s=0.05, timeout=120, progress=False).state == "succeeded"
        held = client.influence(QUERY, top=3).results[0].quality.gradient_index
        assert held.storage == "sq8" and held.storage_recall["queries"] == 20
    service.shutdown()


def test_an_index_remove_job_leaves_rows_out_of_answers(settings, tmp_path):
    """Rows named by row or by id leave the served answers once the job succeeds; unknown ones are a 422
    naming the field, before anything is written."""
    from clients import remove_request
    from engine.builds import build_gradient_index
    from interpret.config import GradientIndexConfig
    from service.schemas import IndexRemoveRequest

    settings = settings.model_copy(update={"gradient_index_dir": tmp_path / "gradient-index"})
    engine = local_engine(settings.model_dir, index_dir=settings.index_dir)
    build_gradient_index(engine, settings.gradient_index_dir, GradientIndexConfig(rank=4, damping=0.1))
    service = InfluenceService(
        settings, local_engine(settings.model_dir, gradient_index_dir=settings.gradient_index_dir)
    )
    with TestClient(create_app(settings, service)) as http:
        client = InfluenceClient(http=http, backoff_s=0.01)
        before = client.influence(QUERY, top=3).results[0]
        with pytest.raises(BadRequestError, match=r"index_remove\.ids \['nope'\] are not in the training"):
            client.submit_job(IndexRemoveRequest(ids=["nope"]), kind="index_remove")
        with pytest.raises(BadRequestError, match=r"index_remove\.rows \[96\] are not in the gradient index"):
            client.submit_job(IndexRemoveRequest(rows=[3, 96]), kind="index_remove")
        both = {"kind": "index_remove", "index_remove": {"rows": [1], "ids": ["1"]}}
        refused = http.post("/v1/jobs", json=both)
        assert refused.status_code == 422 and "by rows or by ids" in refused.text
        request = remove_request(rows=[before.helpful[0].row])
        done = client.wait_job(client.submit_job(request, kind="index_remove").id, poll_s=0.05, timeout=60)
        assert done.result.index_manifest["removed_rows"] == [before.helpful[0].row]
        request = IndexRemoveRequest(ids=[before.harmful[0].id])
        client.wait_job(client.submit_job(request, kind="index_remove").id, poll_s=0.05, timeout=60)
        after = client.influence(QUERY, top=3).results[0]
        assert [e.row for e in after.helpful][:2] == [e.row for e in before.helpful][1:3]
        assert before.harmful[0].row not in {e.row for e in after.harmful}
    service.shutdown()


def test_an_index_add_job_serves_the_new_rows(settings, tmp_path):
    """Rows sent in an index_add job are projected, appended and served with their texts once it
    succeeds, answered as a server started on the grown index answers. Bad
    rows are a 422 naming the row and field, and the same rows twice are refused."""
    from clients import add_request
    from engine.builds import build_gradient_index
    from interpret.config import GradientIndexConfig

    update = {
        "gradient_index_dir": tmp_path / "gradient-index",
        "max_top": 100,
        "allow_full_scan": True,
        "max_k": 200,
    }
    settings = settings.model_copy(update=update)
    engine = local_engine(settings.model_dir, index_dir=settings.index_dir)
    build_gradient_index(engine, settings.gradient_index_dir, GradientIndexConfig(rank=4, damping=0.1))
    service = InfluenceService(
        settings, local_engine(settings.model_dir, gradient_index_dir=settings.gradient_index_dir)
    )
    count = service.engine.num_examples
    with TestClient(create_app(settings, service)) as http:
        client = InfluenceClient(http=http, backoff_s=0.01)
        before = client.influence(QUERY, top=3).results[0]
        rows = [{"text": QUERY, "label": before.label_used}, {"text": "a dull and tired film", "label": 0}]
        with pytest.raises(BadRequestError, match=r"index_add\.rows\[1\]\.id: the training data numbers"):
            client.submit_job(add_request([rows[0], {**rows[1], "id": "x"}]), kind="index_add")
        with pytest.raises(BadRequestError, match=r"index_add\.rows\[0\]\.text_pair: .* leave text_pair out"):
            client.submit_job(add_request([{**rows[0], "text_pair": "and more"}]), kind="index_add")
        with pytest.raises(BadRequestError, match=r"index_add\.rows\[0\]\.label"):
            client.submit_job(add_request([{**rows[0], "label": 7}]), kind="index_add")
        job = client.submit_job(add_request(rows), kind="index_add")
        done = client.wait_job(job.id, poll_s=0.05, timeout=120)
        assert done.result.index_manifest["count"] == count + 2
        assert service.engine.num_examples == service.engine.identity.num_examples == count + 2
        after = client.influence(QUERY, top=count + 2).results[0]  # every row, each side
        restarted = local_engine(settings.model_dir, gradient_index_dir=settings.gradient_index_dir)
        expected = answer_query(restarted, QUERY, config=QueryConfig(top=count + 2))
        for side in ("helpful", "harmful"):  # served as a server started on the grown index serves it
            got, want = getattr(after, side), getattr(expected, side)
            assert [(e.row, e.id, e.text) for e in got] == [(e.row, e.id, e.text) for e in want]
        shown = {e.row: (e.id, e.text) for e in after.helpful}
        assert shown[count] == (str(count), QUERY) and shown[count + 1] == (str(count + 1), rows[1]["text"])
        full = client.influence(QUERY, top=count + 2, method="full", k=None, lissa=LISSA).results[0]
        scored = {e.row for e in full.helpful + full.harmful}
        assert {count, count + 1} <= scored and max(scored) == count + 1  # the explainer scores them too
        with pytest.raises(BadRequestError, match=r"index_add\.rows: .* already in the index"):
            client.submit_job(add_request(rows), kind="index_add")
    service.shutdown()


def test_async_client_over_asgi_transport(settings, service):
    async def scenario():
        transport = httpx.ASGITransport(app=create_app(settings, service))
        async with AsyncInfluenceClient("http://service", transport=transport) as client:
            answer = await client.influence(QUERY, k=25, top=2, lissa=LISSA)
            predictions = await client.predict([QUERY])
            models = await client.models()
            salient = await client.saliency(QUERY, "leave_one_out")
            flipped = await client.attack(QUERY, "hotflip", max_flips=2)
            with pytest.raises(BadRequestError) as too_many:
                await client.influence(QUERY, k=1000)
            return answer, predictions, models, (salient, flipped), too_many.value

    answer, predictions, models, (salient, flipped), too_many = asyncio.run(scenario())
    assert answer.results[0].quality.candidates == 25 and len(answer.results[0].helpful) <= 2
    assert predictions.predictions[0].label == answer.results[0].prediction.label
    assert models.models[0].workers == 1
    assert salient.method == "leave_one_out" and abs(sum(salient.scores) - 1) < 1e-6
    assert flipped.method == "hotflip" and len(flipped.edits) <= 2
    assert too_many.code == "limit_exceeded" and too_many.detail["field"] == "k"


def test_api_key_is_required_when_set(settings, service):
    keyed = Settings(_env_file=None, **{**settings.model_dump(), "api_key": "s3cret"})
    with TestClient(create_app(keyed, service)) as http:
        assert http.get("/v1/models").status_code == 401
        assert http.get("/v1/models", headers={"X-API-Key": "wrong"}).json()["code"] == "unauthorized"
        assert http.get("/healthz").status_code == 200  # probes stay open
        client = InfluenceClient(http=http)
        with pytest.raises(AuthenticationError, match="X-API-Key"):
            client.models()
        assert InfluenceClient(api_key="s3cret", http=http).models().models[0].workers == 1


def test_client_retries_429_then_gives_up():
    calls = []

    def busy_twice(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if len(calls) <= 2:
            return httpx.Response(429, headers={"Retry-After": "0"}, json={"code": "busy", "message": "full"})
        return httpx.Response(200, json={"models": []})

    client = InfluenceClient(transport=httpx.MockTransport(busy_twice), max_retries=2)
    assert client.models().models == [] and len(calls) == 3
    calls.clear()
    stubborn = InfluenceClient(transport=httpx.MockTransport(busy_twice), max_retries=1)
    with pytest.raises(RateLimitedError, match="429 busy: full"):
        stubborn.models()


def failing_then_ok(failure: Exception, calls: list):
    """A transport whose first request fails with ``failure`` and whose later ones answer a queued job."""
    job = {"id": "j1", "kind": "influence", "state": "queued", "progress": 0, "done": 0, "total": 1}
    job["created_at"] = 0.0

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if len(calls) == 1:
            raise failure
        return httpx.Response(200, json={"models": []} if request.method == "GET" else job)

    return handler


@pytest.mark.parametrize("asynchronous", [False, True])
def test_client_resends_only_what_is_safe_after_a_dropped_connection(asynchronous):
    """A keep-alive connection the server was closing (ReadError) is resent for repeatable calls; a job
    submission is resent only when the request never left (ConnectError), never after a ReadError, and a
    timeout is never resent."""

    def run(failure: Exception, call: str) -> int:
        calls: list = []
        handler = failing_then_ok(failure, calls)
        if asynchronous:

            async def go():
                transport = httpx.MockTransport(handler)
                async with AsyncInfluenceClient(transport=transport, max_retries=2, backoff_s=0) as client:
                    await (client.models() if call == "models" else client.submit_job(influence_request("x")))

            asyncio.run(go())
        else:
            client = InfluenceClient(transport=httpx.MockTransport(handler), max_retries=2, backoff_s=0)
            client.models() if call == "models" else client.submit_job(influence_request("x"))
        return len(calls)

    assert run(httpx.ReadError("closed"), "models") == 2
    assert run(httpx.RemoteProtocolError("disconnected"), "models") == 2
    assert run(httpx.ConnectError("refused"), "submit_job") == 2
    with pytest.raises(httpx.ReadError):
        run(httpx.ReadError("closed"), "submit_job")
    with pytest.raises(httpx.ReadTimeout):
        run(httpx.ReadTimeout("slow"), "models")


def test_no_request_the_schema_allows_causes_a_5xx(settings, service):
    """Schemathesis cases for every operation (bounded): every answer is a success or a named 4xx."""
    api = schemathesis.openapi.from_asgi("/openapi.json", create_app(settings, service))
    operations = [result.ok() for result in api.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/influence", "/v1/jobs", "/v1/jobs/{job_id}", "/readyz"}

    for operation in operations:

        @given(case=operation.as_strategy())
        @hypothesis_settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck))
        def no_server_error(case):
            response = case.call()
            assert response.status_code < 500, (case.path, case.body, response.text)
            if response.status_code >= 400:
                assert set(response.json()) == {"code", "message", "detail"}

        no_server_error()
