"""Hostile and heavy traffic (issue 12), one regression test per finding, on the in-process backend
(tiny model): strict parameters, size checks before the tokenizer and off the event loop, the job table,
cancellation, HTTP edges, and what the service discloses. The Ray-side ones (stale deadlines, deadlines and
cancels that stop work without killing workers) are in test_workers.py."""

from __future__ import annotations

import json
import select
import shutil
import socket
import threading
import time

import pytest
import uvicorn
from fastapi.testclient import TestClient
from pydantic import SecretStr

from cli.serving import uvicorn_options
from clients import InfluenceClient, JobFailedError, PermissionDeniedError, evaluate_request
from engine.pipeline import local_engine
from interpret.cancellation import RequestCancelled, RequestContext
from service.app import create_app
from service.core import InfluenceService
from service.settings import Settings
from tests.cluster import free_port

QUERY = "the plot was good and fun"
SLOW_LISSA = {"recursion_depth": 20000, "batch_size": 96, "damping": 0.1, "scale": 20.0}


@pytest.fixture(scope="module")
def settings(engine_dirs, tmp_path_factory) -> Settings:
    index_dir = tmp_path_factory.mktemp("hostile") / "index"
    shutil.copytree(engine_dirs[1], index_dir)
    return Settings(
        _env_file=None,
        model_dir=engine_dirs[0],
        index_dir=index_dir,
        max_k=60,
        max_recursion_depth=20000,
        max_body_bytes=4000,
        max_input_chars=200,
        max_jobs=6,
        max_jobs_per_client=3,
        failed_job_ttl_s=1.0,
        body_timeout_s=1.0,
        body_deadline_s=3.0,
        header_deadline_s=2.0,
        max_headers=40,
        max_header_bytes=4000,
        trusted_proxies=["testclient"],  # the test client's peer: X-Forwarded-For names each client
    )


@pytest.fixture(scope="module")
def service(settings):
    service = InfluenceService(settings, local_engine(settings.model_dir, index_dir=settings.index_dir))
    yield service
    service.shutdown()


@pytest.fixture(scope="module")
def http(settings, service):
    with TestClient(create_app(settings, service)) as client:
        yield client


def wait_for(condition, timeout: float = 20.0) -> None:
    """Poll a condition (never a fixed sleep standing in for one)."""
    limit = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < limit, "condition not reached in time"
        time.sleep(0.05)


# ---------------------------------------------------------------------------------- 5. strict inputs


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"method": "smooth_gradient", "parameters": {"stdev": "NaN"}}, "parameters.stdev"),
        ({"method": "smooth_gradient", "parameters": {"stdev": "Infinity"}}, "parameters.stdev"),
        ({"method": "smooth_gradient", "parameters": {"seed": 2**70}}, "parameters.seed"),
        ({"method": "lime", "parameters": {"kernel_width": 0}}, "parameters.kernel_width"),
        ({"method": "integrated_gradients", "parameters": {"steps": True}}, "parameters.steps"),
        ({"method": "simple_gradient", "label": "1"}, "label"),
        ({"method": "simple_gradient", "label": True}, "label"),
        ({"method": "smooth_gradient", "parameters": {"stdev": 1e30}}, "parameters.stdev"),  # issue 23
        ({"method": "lime", "parameters": {"ridge": 1e300}}, "parameters.ridge"),
        ({"method": "lime", "text": " \t "}, "text is empty or only whitespace"),
    ],
)
def test_saliency_parameters_are_strict_and_named(http, body, named):
    raw = json.dumps({"text": QUERY, **body}).replace('"NaN"', "NaN").replace('"Infinity"', "Infinity")
    response = http.post("/v1/saliency", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert named in response.json()["message"] and set(response.json()) == {"code", "message", "detail"}


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"method": "hotflip", "parameters": {"candidates": 0}}, "parameters.candidates"),
        ({"method": "triggers", "parameters": {"held_out": 0}}, "parameters.held_out"),
        ({"method": "triggers", "parameters": {"num_examples": 0}}, "parameters.num_examples"),
        ({"method": "triggers", "parameters": {"num_tokens": 0}}, "parameters.num_tokens"),
        ({"method": "hotflip", "text_pair": "fun"}, "text_pair: this model was trained on single sentences"),
        ({"method": "triggers", "parameters": {"iterations": 10, "candidates": 20}}, "POST /v1/jobs"),
        ({"method": "input_reduction", "text": "   "}, "text is empty or only whitespace"),
    ],
)
def test_attack_parameters_are_strict_named_and_budgeted(http, body, named):
    response = http.post("/v1/attack", json={"text": QUERY, **body})
    assert response.status_code == 422 and named in response.json()["message"], response.json()


@pytest.mark.parametrize(
    ("job", "field"),
    [
        (
            {
                "kind": "saliency",
                "saliency": {"text": QUERY, "method": "lime", "parameters": {"num_samples": 10**6}},
            },
            "saliency.parameters.num_samples",
        ),
        (
            {
                "kind": "attack",
                "attack": {"text": QUERY, "method": "hotflip", "parameters": {"candidates": 10**6}},
            },
            "attack.parameters.candidates",
        ),
        ({"kind": "attack", "attack": {"text": "  ", "method": "hotflip"}}, "attack.text"),
        (
            {"kind": "influence", "influence": {"inputs": [{"text": QUERY}], "k": 5, "rerank": 10}},
            "influence.rerank",
        ),
        (
            {"kind": "evaluate", "evaluate": {"task": "loo", "inputs": [{"text": QUERY}]}},
            "evaluate.inputs[0].label",
        ),
    ],
)
def test_a_job_is_checked_at_submission_like_its_route_and_names_the_full_path(http, job, field):
    """Issue 23: saliency and attack jobs above the limits were accepted (202) and failed later; job
    errors named their field without the job's prefix."""
    response = http.post("/v1/jobs", json=job)
    assert response.status_code == 422, response.text
    assert response.json()["detail"]["field"] == field


@pytest.mark.parametrize(
    ("knobs", "field"),
    [
        ({"k": 5, "rerank": 10}, "rerank"),  # rerank is the gradient index's
        ({"k": 5, "cg_rows": 50}, "cg_rows"),  # LiSSA reads no cg_rows
        ({"k": 5, "solver": "cg", "cg_rows": 50, "lissa": {"recursion_depth": 7}}, "lissa.recursion_depth"),
        ({"k": 5, "exact": True, "solver": "cg"}, "solver"),
    ],
)
def test_a_knob_the_method_ignores_is_refused_by_name(http, knobs, field):
    response = http.post("/v1/influence", json={"inputs": [{"text": QUERY}], **knobs})
    assert response.status_code == 422, response.text
    assert response.json()["detail"]["field"] == field and "is read by" in response.json()["message"]


@pytest.mark.parametrize(("lissa", "field"), [({"damping": 1e300}, "damping"), ({"scale": 1e300}, "scale")])
def test_float_knobs_have_bounds_that_keep_answers_finite(http, lissa, field):
    response = http.post("/v1/influence", json={"inputs": [{"text": QUERY}], "k": 5, "lissa": lissa})
    assert response.status_code == 422 and field in response.json()["message"], response.text


def test_which_knobs_each_method_reads():
    """The rule behind the 422s, for the gradient index too (the hostile service has none)."""
    from interpret.config import LissaConfig, QueryConfig, unused_knobs

    def unused(ran_method, ran_solver, **knobs):
        return [name for name, _ in unused_knobs(QueryConfig(**knobs), ran_method, ran_solver)]

    assert unused("gradient", "lissa", k=10**12) == ["k"]
    assert unused("gradient", "lissa", exact=True) == ["exact"]
    assert unused("gradient", "cg", solver="cg") == ["solver"]
    assert unused("gradient", "lissa", lissa=LissaConfig(recursion_depth=5)) == ["lissa"]
    assert unused("gradient", "index", rerank=5, lissa=LissaConfig(damping=0.1)) == ["lissa.damping"]
    assert unused("gradient", "cg", rerank=5, solver="cg", cg_rows=50, lissa=LissaConfig(damping=0.1)) == []
    assert unused("full", "lissa", method="full", k=50) == ["k"]
    assert unused("full", "lissa", rerank=5, k=None) == ["rerank"]
    # a client that sends every field at its default is served
    assert unused("gradient", "lissa", k=1000, solver=None, exact=False, lissa=LissaConfig()) == []
    assert unused("fastif", "lissa", lissa=LissaConfig(recursion_depth=20, damping=0.1, scale=20.0)) == []


def test_a_full_scan_needs_the_operators_consent(http, service, settings):
    response = http.post("/v1/influence", json={"inputs": [{"text": QUERY}], "k": None})
    assert response.status_code == 422 and "INFLUENCE_ALLOW_FULL_SCAN" in response.json()["message"]
    assert http.get("/v1/models").json()["models"][0]["full_scan_allowed"] is False
    audit = {"kind": "evaluate", "evaluate": {"task": "recall", "inputs": [{"text": QUERY, "label": 1}]}}
    refused = http.post("/v1/jobs", json=audit)
    assert refused.status_code == 422 and "INFLUENCE_ALLOW_FULL_SCAN" in refused.json()["message"]


def test_no_response_names_a_worker_or_its_pid(http):
    body = {"inputs": [{"text": QUERY}], "k": 5, "lissa": {"recursion_depth": 20, "scale": 20.0}}
    response = http.post("/v1/influence", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["results"][0]["quality"]["lissa"]["workers"] is None
    assert "pid" not in response.text.lower()


# --------------------------------------------------------------------- 4. size checks, off the loop


def test_oversized_texts_are_refused_before_the_tokenizer_and_off_the_event_loop(http, service, monkeypatch):
    calls = []
    tokenizer = service.tokenizer

    def recording(*args, **kwargs):
        calls.append(threading.current_thread().name)
        return tokenizer(*args, **kwargs)

    monkeypatch.setattr(service, "tokenizer", recording)
    long = http.post("/v1/influence", json={"inputs": [{"text": "good " * 100}], "k": 10})
    assert long.status_code == 422 and "inputs[0].text characters=500 exceeds" in long.json()["message"]
    assert calls == []  # refused before any tokenizer ran
    ok = http.post(
        "/v1/influence", json={"inputs": [{"text": QUERY}], "k": 10, "lissa": {"recursion_depth": 2}}
    )
    assert ok.status_code == 200 and calls and all("AnyIO worker thread" in name for name in calls)


# -------------------------------------------------------------------- 6. index builds checked first


def test_an_index_build_checks_its_factory_before_any_work(http):
    response = http.post("/v1/jobs", json={"kind": "index_build", "factory": "IVF-bogus,Flat"})
    assert response.status_code == 422 and response.json()["detail"]["field"] == "factory"
    assert "is not a FAISS factory string" in response.json()["message"]


# ----------------------------------------------------------------------------- 3. the job table


def test_jobs_have_a_quota_per_client_a_list_a_cancel_and_a_short_life_when_failed(http, service):
    alice, bob = {"X-Forwarded-For": "203.0.113.1"}, {"X-Forwarded-For": "203.0.113.2"}
    failing = {"kind": "influence", "influence": {"inputs": [{"text": QUERY}], "k": 5}}
    failing["influence"]["lissa"] = {"recursion_depth": 50, "damping": 0.01, "scale": 1e-3}
    ids = [http.post("/v1/jobs", json=failing, headers=alice).json()["id"] for _ in range(3)]
    refused = http.post("/v1/jobs", json=failing, headers=alice)
    assert refused.status_code == 429 and "yours" in refused.json()["message"]
    assert 1 <= int(refused.headers["Retry-After"]) <= 5  # when a place frees up, not a fixed guess
    # issue 23: on a server without keys an invented X-API-Key names no one, so it buys no quota
    invented = [{**alice, "X-API-Key": f"invented-{n}"} for n in range(3)]
    assert [http.post("/v1/jobs", json=failing, headers=h).status_code for h in invented] == [429] * 3
    assert http.post("/v1/jobs", json=failing, headers=bob).status_code == 202  # others are not blocked
    listed = http.get("/v1/jobs", headers=alice).json()["jobs"]
    assert [job["id"] for job in listed] == ids and all(job["result"] is None for job in listed)
    assert http.get(f"/v1/jobs/{ids[0]}", headers=bob).status_code == 404  # not yours: not there
    wait_for(lambda: all(j["state"] == "failed" for j in http.get("/v1/jobs", headers=alice).json()["jobs"]))
    wait_for(lambda: http.get("/v1/jobs", headers=alice).json()["jobs"] == [])  # failed_job_ttl_s = 1
    assert http.post("/v1/jobs", json=failing, headers=alice).status_code == 202


def test_a_jobs_deadline_is_set_by_its_kind_and_bounds_the_whole_job():
    """Issue 23: a job's deadline is the operator's for its kind (INFLUENCE_JOB_DEADLINE_S), from its start;
    heavy kinds default to four hours, the others to the synchronous deadline."""
    from pydantic import ValidationError

    from service.jobs import JobManager

    settings = Settings(_env_file=None, deadline_s=30, job_deadline_s={"evaluate": 2})
    kinds = ("evaluate", "index_build", "saliency")
    assert [settings.job_deadline(kind) for kind in kinds] == [2, 14_400, 30]
    with pytest.raises(ValidationError, match="unknown job kinds"):
        Settings(_env_file=None, job_deadline_s={"evaluation": 2})
    manager = JobManager(4, 60, deadline_s=settings.job_deadline)
    seen: dict[str, RequestContext] = {}
    try:
        for kind in ("evaluate", "saliency"):
            job = manager.submit(kind, lambda progress, context, kind=kind: seen.update({kind: context}), "a")
            wait_for(lambda job=job: manager.list("a")[-1].finished_at is not None)
            assert seen[kind].request_id == job.id
    finally:
        manager.shutdown()
    assert 0 < seen["evaluate"].remaining() <= 2 < seen["saliency"].remaining() <= 30


def test_deleting_a_running_job_stops_its_work(http, service, settings):
    slow = {"kind": "influence", "influence": {"inputs": [{"text": QUERY}], "k": 5, "lissa": SLOW_LISSA}}
    headers = {"X-Forwarded-For": "203.0.113.3"}
    job = http.post("/v1/jobs", json=slow, headers=headers).json()

    def state() -> str:
        return http.get("/v1/jobs", headers=headers).json()["jobs"][0]["state"]

    wait_for(lambda: state() == "running")  # jobs of the tests before may still be ahead in the queue
    with TestClient(create_app(settings, service), headers=headers) as carol:
        client = InfluenceClient(http=carol)
        assert [j.id for j in client.jobs().jobs] == [job["id"]]
        assert client.cancel_job(job["id"]).state == "running"
        wait_for(lambda: state() == "cancelled")
        assert service.engine.backend.explainer.cancellations.running() == 0
        with pytest.raises(JobFailedError, match="cancelled"):
            client.wait_job(job["id"], poll_s=0.05, timeout=10, progress=False)


# ------------------------------------------------------------------ issue 23: scheduler and identity


class Gate:
    """Work that runs until the test opens its gate (or the job is cancelled): a job of known length."""

    def __init__(self):
        self.opened, self.started = threading.Event(), threading.Event()

    def __call__(self, progress, context):
        self.started.set()
        while not self.opened.wait(0.02):
            if time.time() > context.deadline:
                raise TimeoutError("gate never opened")
        return None


def test_a_cheap_job_never_waits_behind_another_clients_heavy_one_and_clients_take_turns():
    from service.jobs import JobManager

    manager = JobManager(20, 60, concurrency={"interactive": 1, "heavy": 1}, deadline_s=lambda kind: 60.0)
    gates = [Gate() for _ in range(5)]
    try:
        manager.submit("evaluate", gates[0], "address:a")  # a heavy job holds the heavy slot
        gates[0].started.wait(5)
        quick = manager.submit("saliency", lambda progress, context: None, "address:b")
        wait_for(lambda: manager.fetch(quick.id, "address:b").state == "succeeded", timeout=5)
        assert manager.list("address:a")[0].state == "running"  # b's job ran beside a's heavy one
        # a fills the interactive queue first; b's one job is still next, a's come after, in order
        for gate in gates[1:4]:
            manager.submit("influence", gate, "address:a")
        gates[1].started.wait(5)
        late = manager.submit("influence", gates[4], "address:b")
        assert (late.state, late.queue_position) == ("queued", 0)
        waiting = [job for job in manager.list("address:a") if job.state == "queued"]
        assert [job.queue_position for job in waiting] == [1, 2]
        starts = [late.estimated_start_s] + [job.estimated_start_s for job in waiting]
        assert starts == sorted(starts) and starts[0] >= 0
        gates[1].opened.set()
        gates[4].started.wait(5)  # b's job started before a's second one
        assert not gates[2].started.is_set()
    finally:
        for gate in gates:
            gate.opened.set()
        manager.shutdown()


def test_no_client_holds_every_slot_of_a_class():
    """With two interactive slots, one client's flood runs one job at a time beside the other slot, so
    another client's job starts at once instead of waiting for one of the flood's to finish."""
    from service.jobs import JobManager

    manager = JobManager(20, 60, concurrency={"interactive": 2, "heavy": 1}, deadline_s=lambda kind: 60.0)
    flood, probe = [Gate() for _ in range(3)], Gate()
    try:
        for gate in flood:
            manager.submit("influence", gate, "address:a")
        flood[0].started.wait(5)
        assert [job.state for job in manager.list("address:a")] == ["running", "queued", "queued"]
        manager.submit("saliency", probe, "address:b")
        assert probe.started.wait(5) and not flood[1].started.is_set()
    finally:
        for gate in [*flood, probe]:
            gate.opened.set()
        manager.shutdown()


def test_the_queue_shows_in_job_status_and_retry_after(http, service, settings):
    from service.core import InfluenceService

    narrow = InfluenceService(settings.model_copy(update={"interactive_jobs": 1}), service.engine)
    slow = {"kind": "influence", "influence": {"inputs": [{"text": QUERY}], "k": 5, "lissa": SLOW_LISSA}}
    try:
        with TestClient(create_app(settings, narrow)) as client:
            first = client.post("/v1/jobs", json=slow).json()
            wait_for(lambda: client.get("/v1/jobs").json()["jobs"][0]["state"] == "running")
            queued = client.post("/v1/jobs", json=slow)
            assert queued.status_code == 202 and queued.json()["queue_position"] == 0
            assert int(queued.headers["Retry-After"]) >= 1
            polled = client.get(f"/v1/jobs/{queued.json()['id']}")
            assert polled.json()["state"] == "queued" and "Retry-After" in polled.headers
            for job in (queued.json(), first):
                client.delete(f"/v1/jobs/{job['id']}")
            wait_for(lambda: all(j["state"] == "cancelled" for j in client.get("/v1/jobs").json()["jobs"]))
    finally:
        narrow.jobs.shutdown()


def test_keys_name_clients_with_their_own_quotas_and_heavy_jobs_can_be_reserved(service, settings):
    from service.core import InfluenceService

    keyed = settings.model_copy(
        update={
            "api_keys": {"alice": SecretStr("alice-key"), "bob": SecretStr("bob-key")},
            "max_jobs_per_client": 1,
            "heavy_job_callers": "keyed",
        }
    )
    audit = {"kind": "evaluate", "evaluate": {"task": "lds_head", "inputs": [{"text": QUERY, "label": 1}]}}
    slow = {"kind": "influence", "influence": {"inputs": [{"text": QUERY}], "k": 5, "lissa": SLOW_LISSA}}
    served = InfluenceService(keyed, service.engine)
    try:
        with TestClient(create_app(keyed, served)) as client:
            alice, bob = {"X-API-Key": "alice-key"}, {"X-API-Key": "bob-key"}
            assert client.post("/v1/jobs", json=slow, headers={"X-API-Key": "mallory"}).status_code == 401
            assert client.post("/v1/jobs", json=slow, headers=alice).status_code == 202
            # the quota is alice's key's, wherever she calls from; bob's key has its own
            moved = {**alice, "X-Forwarded-For": "198.51.100.7"}
            assert client.post("/v1/jobs", json=slow, headers=moved).status_code == 429
            assert client.post("/v1/jobs", json=audit, headers=bob).status_code == 202  # keyed: allowed
            # the counters (other clients' cache hits among them) are behind a key too
            assert client.get("/metrics").status_code == 401
            assert client.get("/metrics", headers=bob).status_code == 200
            for headers in (alice, bob):
                for job in client.get("/v1/jobs", headers=headers).json()["jobs"]:
                    client.delete(f"/v1/jobs/{job['id']}", headers=headers)
    finally:
        served.jobs.shutdown()
    for callers, status in (("keyed", 403), ("nobody", 403), ("everyone", 202)):
        keyless = settings.model_copy(update={"heavy_job_callers": callers})
        served = InfluenceService(keyless, service.engine)
        try:
            with TestClient(create_app(keyless, served)) as client:
                response = client.post("/v1/jobs", json=audit)
                assert response.status_code == status, response.text
                if status == 403:
                    assert "INFLUENCE_HEAVY_JOB_CALLERS" in response.json()["message"]
                    with pytest.raises(PermissionDeniedError, match="heavy job"):
                        InfluenceClient(http=client).submit_job(
                            evaluate_request("lds_head", [QUERY]), "evaluate"
                        )
        finally:
            served.jobs.shutdown()


@pytest.mark.parametrize(
    ("peer", "forwarded", "trusted", "client"),
    [
        ("203.0.113.9", "1.2.3.4", [], "203.0.113.9"),  # not a proxy: the header is the client's own
        ("10.0.0.2", "1.2.3.4", ["10.0.0.0/8"], "1.2.3.4"),
        ("10.0.0.2", "6.6.6.6, 1.2.3.4, 10.0.0.5", ["10.0.0.0/8"], "1.2.3.4"),  # prepended hops ignored
        ("10.0.0.2", "", ["10.0.0.0/8"], "10.0.0.2"),
    ],
)
def test_forwarded_addresses_are_trusted_only_from_proxies(peer, forwarded, trusted, client):
    from starlette.requests import Request

    from service.app import client_address

    headers = [(b"x-forwarded-for", forwarded.encode())] if forwarded else []
    request = Request({"type": "http", "client": (peer, 1234), "headers": headers})
    assert client_address(request, trusted) == client


# --------------------------------------------------------------------------------- 2. cancellation


def test_a_cancelled_request_stops_at_the_next_step(service):
    from service.schemas import InfluenceRequest

    request = InfluenceRequest(inputs=[{"text": QUERY}], k=5, lissa=SLOW_LISSA)
    context = RequestContext("cancel-me", time.time() + 600)
    failure: list[BaseException] = []

    def run():
        try:
            service.influence(request, context)
        except BaseException as error:
            failure.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    wait_for(lambda: service.engine.backend.explainer.cancellations.running() > 0)
    service.cancel("cancel-me")
    thread.join(timeout=20)
    assert not thread.is_alive() and isinstance(failure[0], RequestCancelled)


@pytest.fixture
def server(settings, service):
    """The app under uvicorn on loopback, in this process (the in-process backend, no Ray)."""
    port = free_port()
    app = create_app(settings, service)
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", **uvicorn_options(settings)
    )
    running = uvicorn.Server(config)
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    wait_for(lambda: running.started)
    yield port
    running.should_exit = True
    thread.join(timeout=10)


def test_a_client_that_goes_away_frees_its_slot_and_its_work(server, service):
    import httpx

    body = {"inputs": [{"text": QUERY}], "k": 5, "lissa": SLOW_LISSA}
    explainer = service.engine.backend.explainer
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"http://127.0.0.1:{server}/v1/influence", json=body, timeout=1.5)
    wait_for(lambda: service.in_flight.count == 0 and explainer.cancellations.running() == 0, timeout=10)


# ---------------------------------------------------------------------------------- 7. HTTP edges


def raw_request(port: int, head: bytes, body: bytes = b"") -> bytes:
    """Send raw bytes; read one whole answer (headers, then as many bytes as its Content-Length)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(head + body)
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer.split(b"\r\n\r\n", 1)[1]) < _length(answer):
            chunk = connection.recv(65536)
            if not chunk:
                break
            answer += chunk
        return answer


def _length(answer: bytes) -> int:
    for line in answer.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":", 1)[1])
    return 0


def test_a_body_shorter_than_its_length_gets_408_not_a_hung_connection(server):
    head = b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    head += b"Content-Length: 100\r\n\r\n"
    started = time.monotonic()
    answer = raw_request(server, head, b'{"inputs"')
    assert answer.startswith(b"HTTP/1.1 408") and b'"code":"request_timeout"' in answer
    assert time.monotonic() - started < 5


def test_a_body_trickled_byte_by_byte_is_cut_at_the_total_deadline(server):
    """Issue 23: one byte every 0.8 s never stalls the 1 s gap, so the body was never cut off."""
    head = b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    head += b"Content-Length: 100\r\n\r\n"
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", server), timeout=10) as connection:
        connection.sendall(head)
        answer = b""
        for byte in b'{"inputs": [{"text": "a"}]}' * 4:
            connection.sendall(bytes([byte]))
            time.sleep(0.8)
            connection.setblocking(False)
            try:
                answer = connection.recv(65536)
            except BlockingIOError:
                pass
            finally:
                connection.setblocking(True)
            if answer:
                break
        while b"\r\n\r\n" in answer and len(answer.split(b"\r\n\r\n", 1)[1]) < _length(answer):
            answer += connection.recv(65536)
    assert answer.startswith(b"HTTP/1.1 408") and b"INFLUENCE_BODY_DEADLINE_S" in answer, answer
    assert time.monotonic() - started < 6  # body_deadline_s=3, not the 80 s the trickle would take


def test_headers_trickled_byte_by_byte_are_cut_at_the_total_deadline(server):
    """Issue 23: headers sent a byte at a time held the connection for ever (uvicorn has no deadline)."""
    started, closed = time.monotonic(), None
    with socket.create_connection(("127.0.0.1", server), timeout=10) as connection:
        for byte in b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nX-Trickle: " + b"a" * 400:
            readable, _, _ = select.select([connection], [], [], 0)
            if readable and connection.recv(1, socket.MSG_PEEK) == b"":
                closed = time.monotonic()
                break
            try:
                connection.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                closed = time.monotonic()
                break
            time.sleep(0.2)
    assert closed is not None, "the connection was never closed"
    assert closed - started < 5  # header_deadline_s=2, not the 80 s the trickle would take


def test_chunked_oversized_bodies_get_413_and_headers_are_bounded(http):
    chunks = iter([b'{"inputs": [' + b" " * 3000, b" " * 3000 + b"]}"])
    response = http.post("/v1/predict", content=chunks, headers={"content-type": "application/json"})
    assert response.status_code == 413 and response.json()["code"] == "payload_too_large"
    many = {f"x-header-{i}": "1" for i in range(60)}
    assert http.get("/v1/models", headers=many).status_code == 431
    assert http.get("/v1/models", headers={"x-big": "y" * 5000}).json()["code"] == "headers_too_large"


def test_a_405_names_every_method_of_the_path_and_errors_cap_what_they_echo(http):
    """Issue 23: a 405 listed one method where the path serves two; a 100 kB job id came back twice."""
    refused = http.post("/v1/jobs/abc", json={})
    assert refused.status_code == 405 and refused.json()["code"] == "method_not_allowed"
    assert {"GET", "DELETE"} <= {m.strip() for m in refused.headers["Allow"].split(",")}
    missing = http.get(f"/v1/jobs/{'x' * 20_000}")
    assert missing.status_code == 404 and len(missing.content) < 2_000


def test_a_body_that_is_not_utf8_gets_a_4xx_in_the_error_shape(http):
    response = http.post("/v1/predict", content=b"\xff\xfe{}", headers={"content-type": "application/json"})
    assert 400 <= response.status_code < 500 and set(response.json()) == {"code", "message", "detail"}
    spec = http.get("/openapi.json").json()["paths"]["/v1/predict"]["post"]["responses"]
    assert {"400", "408", "413", "422", "431"} <= set(spec)


# ---------------------------------------------------------------------------------- 8. disclosure


def test_probes_and_models_disclose_no_pids_or_paths(http, tmp_path):
    ready = http.get("/readyz").json()
    assert set(ready) == {"ready", "index_loaded", "training_data", "workers", "workers_answering"}
    model = http.get("/v1/models").json()["models"][0]
    assert "/" not in model["model_dir"] and "/" not in model["card"]["data_spec"]["source"]
    assert "data_source" not in model["card"]

    from workers.cluster import secure_token_file

    token = tmp_path / "auth_token"
    token.write_text("secret")
    token.chmod(0o644)
    secure_token_file(token)
    assert token.stat().st_mode & 0o777 == 0o600
