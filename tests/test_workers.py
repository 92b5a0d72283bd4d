"""The Ray pool: same s_test and scores as one process, whatever the split; faults; identity checks."""

from __future__ import annotations

import time

import numpy as np
import pytest
import ray
import torch

from engine.backends import LocalBackend
from engine.cache import STestCache
from engine.pipeline import Engine, answer_query
from interpret.cancellation import RequestCancelled, RequestContext
from interpret.checkpoint import load_checkpoint
from interpret.config import ATTACK_PARAMETERS, IntegratedGradientsParams, method_parameters
from interpret.explainer import Explainer
from interpret.influence import (
    LissaConfig,
    QueryConfig,
    lissa_s_test,
    prepare_test_point,
    score_rows,
    training_hessian,
)
from interpret.influence.objective import per_example_gradients
from interpret.models import encode_features
from tests.exactness import assert_same_solution, map_amplification
from workers import (
    PoolSettings,
    WorkerMismatchError,
    WorkerPool,
    WorkerPoolError,
    WorkerSpec,
    WorkerTimeoutError,
)

pytestmark = pytest.mark.slow  # Ray pool: not in the fast tier (pytest -m 'not slow')

QUERY = "the plot was good and fun"
LISSA = LissaConfig(recursion_depth=40, batch_size=4, damping=0.1, scale=20.0, seed=3)


@pytest.fixture(scope="module")
def reference(engine_dirs):
    """The single-process checkpoint in float64."""
    return load_checkpoint(engine_dirs[0], dtype=torch.float64)


@pytest.fixture(scope="module")
def pool(ray_local, engine_dirs):
    pool = WorkerPool(WorkerSpec(str(engine_dirs[0]), dtype="float64"), PoolSettings(num_workers=3))
    yield pool
    pool.shutdown()


def local_s_test(reference, config: LissaConfig, text: str = QUERY) -> torch.Tensor:
    theta = reference.tracked.parameters()
    v = prepare_test_point(reference.tracked, theta, text, None, None).v
    return lissa_s_test(reference.tracked, theta, v, reference.train, config).s_test


def pool_s_test(pool: WorkerPool, config: LissaConfig, text: str = QUERY):
    """The pool's ``STest``: repetition vectors left in the object store, and the report."""
    pending = pool.start_s_test(text, None, None, QueryConfig(lissa=config))
    return pool.finish_s_test(pending)


def local_engine_of(reference) -> Engine:
    return Engine(LocalBackend(Explainer(reference)), reference.examples, None, reference.card)


@pytest.mark.parametrize("repetitions", [1, 2, 4])
def test_pool_s_test_and_scores_equal_one_process(pool, reference, repetitions):
    """Same arithmetic in another order (repetitions on other processes, all-reduced; rows scored in 1 to
    70 shards), so the element-wise tolerance stays tight: it is not a solve compared across BLAS
    kernels."""
    config = LISSA.replace(num_repetitions=repetitions)
    expected = local_s_test(reference, config)
    s_test = pool_s_test(pool, config)
    report = s_test.report
    np.testing.assert_allclose(pool.average(s_test), expected.numpy(), rtol=1e-12, atol=1e-15)
    assert report.norm_traces.shape == (repetitions, LISSA.recursion_depth)
    assert len(set(report.workers)) == min(repetitions, pool.num_workers)  # really spread out
    assert (report.relative_spread > 0) == (repetitions > 1)

    rows = np.random.default_rng(0).permutation(len(reference.examples))[:70]
    theta = reference.tracked.parameters()
    expected_scores = score_rows(reference.tracked, theta, expected, reference.train, rows)
    for shards in (1, 2, 3, 7, 70):
        scores = pool.score(s_test, rows, block_size=16, num_shards=shards)
        np.testing.assert_allclose(scores, expected_scores, rtol=1e-10, atol=1e-14)


def test_pooled_query_answers_like_the_local_engine(pool, reference):
    """Same arithmetic in another order (the pool's workers against this process), so the element-wise
    tolerance stays tight: it is not a solve compared across BLAS kernels."""
    config = QueryConfig(k=None, top=4, lissa=LISSA.replace(num_repetitions=2))
    local = answer_query(local_engine_of(reference), QUERY, config=config)
    pooled = answer_query(Engine(pool, reference.examples, None, {}), QUERY, config=config)
    assert [e.id for e in pooled.helpful] == [e.id for e in local.helpful]
    assert [e.id for e in pooled.harmful] == [e.id for e in local.harmful]
    np.testing.assert_allclose(pooled.candidate_scores, local.candidate_scores, rtol=1e-10)
    assert pooled.predicted_label == local.predicted_label
    np.testing.assert_allclose(pooled.lissa.norm_traces, local.lissa.norm_traces, rtol=1e-12)
    assert local.lissa.workers == ["in-process"] * 2
    assert all("/pid" in worker for worker in pooled.lissa.workers)


def test_encode_and_predict_split_over_workers(pool, reference):
    texts = reference.examples.texts[:11]
    expected = encode_features(reference.tracked, texts, progress=False)
    np.testing.assert_allclose(pool.encode(texts), expected, rtol=1e-5, atol=1e-6)
    probabilities = pool.predict(texts)
    assert probabilities.shape == (11, 2)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0)


def test_predict_saliency_and_attacks_on_the_pool_equal_the_local_ones(pool, reference):
    """The light calls, and a trigger search (sent to the heavy group through ``search_attack``), answer on
    the workers exactly as in this process."""
    local = LocalBackend(Explainer(reference))
    np.testing.assert_allclose(pool.predict([QUERY]), local.predict([QUERY], None), rtol=1e-10)
    steps = IntegratedGradientsParams(steps=10)
    expected = local.saliency(QUERY, None, "integrated_gradients", None, steps)
    got = pool.saliency(QUERY, None, "integrated_gradients", None, steps)
    assert got.tokens == expected.tokens and got.label == expected.label
    np.testing.assert_allclose(got.raw_scores, expected.raw_scores, rtol=1e-8, atol=1e-12)
    trigger = {"num_tokens": 1, "iterations": 2, "num_examples": 16, "held_out": 16}
    for method, parameters in (("hotflip", {}), ("triggers", trigger)):
        params = method_parameters("attack", ATTACK_PARAMETERS, method, parameters)
        expected = local.attack(QUERY, None, method, None, None, params)
        got = pool.attack(QUERY, None, method, None, None, params)
        assert (got.method, got.final, got.success) == (method, expected.final, expected.success)
        np.testing.assert_allclose(got.outputs_after, expected.outputs_after, rtol=1e-8)


def test_exact_s_test_on_the_pool(ray_local, engine_dirs):
    spec = WorkerSpec(str(engine_dirs[0]), tracked_layers="classifier", dtype="float64")
    reference = load_checkpoint(engine_dirs[0], tracked_layers="classifier", dtype=torch.float64)
    small_pool = WorkerPool(spec, PoolSettings(num_workers=1))
    try:
        config = QueryConfig(k=None, lissa=LissaConfig(damping=0.01), exact=True)
        local = answer_query(local_engine_of(reference), QUERY, config=config)
        pooled = answer_query(Engine(small_pool, reference.examples, None, {}), QUERY, config=config)
        # a dense solve in another process, on its own thread count: equal within the system's conditioning
        tracked, theta, train = reference.tracked, reference.tracked.parameters(), reference.train
        damped = training_hessian(tracked, theta, train) + 0.01 * torch.eye(len(theta), dtype=torch.float64)
        v = prepare_test_point(tracked, theta, QUERY, None, None).v
        states, labels = train.load(local.candidate_rows)
        gradients = per_example_gradients(tracked, theta, states, labels)
        amplification = map_amplification(gradients, torch.linalg.solve(damped, v))
        assert_same_solution(pooled.candidate_scores, local.candidate_scores, damped, "scores", amplification)
        assert pooled.lissa is None
    finally:
        small_pool.shutdown()


def test_killing_a_worker_mid_query_gives_the_same_answer(pool, reference):
    """A lost repetition or shard is re-run elsewhere. Same arithmetic in another order (a fresh worker
    re-runs the same seeded steps), so the element-wise tolerance stays tight: it is not a solve compared
    across BLAS kernels."""
    config = LISSA.replace(num_repetitions=3, recursion_depth=400)
    expected = local_s_test(reference, config)
    before = {ray.get(a.identity.remote()).worker for a in pool.workers.actors}
    pending = pool.start_s_test(QUERY, None, None, QueryConfig(lissa=config))
    victim = pending.calls[0].actor
    ray.kill(victim)  # whether its repetition had started or not, it must be re-run elsewhere
    s_test = pool.finish_s_test(pending)
    np.testing.assert_allclose(pool.average(s_test), expected.numpy(), rtol=1e-12, atol=1e-15)
    assert pending.calls[0].attempts == 1 and s_test.report.workers[0] not in before
    assert all(a is not victim for a in pool.workers.actors) and len(pool.workers.actors) == 3

    # a worker lost between s_test and scoring: its shard is re-run, the vectors are still there
    rows = np.arange(len(reference.examples))
    theta = reference.tracked.parameters()
    ray.kill(pool.workers.actors[1])
    scores = pool.score(s_test, rows, num_shards=3)
    expected_scores = score_rows(reference.tracked, theta, expected, reference.train, rows)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-10, atol=1e-14)


def test_exhausted_retries_name_the_part_and_the_next_query_works(ray_local, engine_dirs):
    fragile = WorkerPool(WorkerSpec(str(engine_dirs[0])), PoolSettings(num_workers=1, max_retries=0))
    try:
        pending = fragile.start_s_test(QUERY, None, None, QueryConfig(lissa=LISSA))
        ray.kill(pending.calls[0].actor)
        failure = r"LiSSA repetition 0 failed on worker \S+/pid\d+/cpu 1 time.*max_retries=0"
        with pytest.raises(WorkerPoolError, match=failure):
            fragile.finish_s_test(pending)
        report = pool_s_test(fragile, LISSA).report  # the dead worker was replaced
        assert np.isfinite(report.norm_traces).all()

    finally:
        fragile.shutdown()


SLOW = LissaConfig(recursion_depth=1_000_000, batch_size=4, damping=0.1, scale=20.0)


def test_a_deadline_or_a_cancel_stops_the_work_without_killing_the_worker(pool):
    """Issue 12: past its deadline, or cancelled, a request's work stops at the next LiSSA step on the
    worker itself; the worker answers the next query at once and is never replaced."""
    actors, replacements = pool.workers.actors, pool.replacements
    late = RequestContext("late", time.time() + 1.0)
    started = time.monotonic()
    with pytest.raises(WorkerTimeoutError, match="past its deadline and was stopped"):
        pool.finish_s_test(pool.start_s_test(QUERY, None, None, QueryConfig(lissa=SLOW), late))
    assert time.monotonic() - started < 15  # the step boundary, not the 30 s grace or a restart

    pending = pool.start_s_test(QUERY, None, None, QueryConfig(lissa=SLOW), RequestContext("unwanted"))
    wait_until_running = pending.calls[0].actor.run.options(concurrency_group="health")
    assert ray.get(wait_until_running.remote(None, Explainer.ping)) == pending.calls[0].worker
    pool.cancel("unwanted")
    with pytest.raises(RequestCancelled):
        pool.finish_s_test(pending)
    assert pool.workers.actors == actors and pool.replacements == replacements
    assert np.isfinite(pool_s_test(pool, LISSA).report.norm_traces).all()


def test_a_cached_s_test_outlives_the_deadline_of_the_query_that_made_it(pool, reference):
    """Issue 12, the worst finding: a refinement of a cached query sent after the first query's deadline
    failed at once with a timeout, and the pool killed its workers. Deadlines belong to requests."""
    engine = Engine(pool, reference.examples, None, {})
    cache = STestCache(8, 10**9)
    config = QueryConfig(k=None, top=3, lissa=LISSA)
    first = answer_query(
        engine, QUERY, config=config, cache=cache, context=RequestContext("a", time.time() + 3)
    )
    time.sleep(max(0.0, 3.5 - first.timings["total"]))  # let the first request's deadline pass
    actors, replacements = pool.workers.actors, pool.replacements
    refined = config.replace(top=5)
    second = answer_query(
        engine, QUERY, config=refined, cache=cache, context=RequestContext("b", time.time() + 60)
    )
    assert second.s_test_cached and [e.id for e in second.helpful[:3]] == [e.id for e in first.helpful]
    assert pool.workers.actors == actors and pool.replacements == replacements


def test_user_errors_come_back_as_themselves(pool):
    with pytest.raises(ValueError, match="label=5 is not a label of this model"):
        pool.prepare(QUERY, None, 5)
    diverging = LissaConfig(recursion_depth=500, damping=0.01, scale=1e-3)
    with pytest.raises(ArithmeticError, match="increase scale"):
        pool_s_test(pool, diverging)


def test_workers_must_match_the_index(ray_local, engine_dirs):
    spec = WorkerSpec(str(engine_dirs[0]))
    with pytest.raises(WorkerMismatchError, match="model_fingerprint"):
        WorkerPool(spec, PoolSettings(num_workers=1), expected={"model_fingerprint": "0" * 64})


def test_workers_that_cannot_start_say_why(ray_local, tmp_path):
    with pytest.raises(WorkerPoolError, match=r"failed to load .*no model there \(no config\.json\)"):
        WorkerPool(WorkerSpec(str(tmp_path)), PoolSettings(num_workers=1))
    too_big = PoolSettings(num_workers=1, cpus_per_worker=1000, deadline_s=2)
    with pytest.raises(WorkerTimeoutError, match="did not start within 2 s; the cluster offers"):
        WorkerPool(WorkerSpec(str(tmp_path)), too_big)


def test_pool_settings_are_validated():
    with pytest.raises(ValueError, match="num_workers"):
        PoolSettings(num_workers=0)
    with pytest.raises(ValueError, match="max_retries"):
        PoolSettings(max_retries=-1)
    with pytest.raises(ValueError, match="dtype"):
        WorkerSpec("model", dtype="int8")


@pytest.mark.parametrize(  # 1, 3 and 5 shards over 3 workers; and grid coordinates chosen on them
    ("chunk_rows", "coordinates"), [(96, None), (40, None), (20, None), (40, 30)]
)
def test_a_gradient_index_built_on_the_pool_equals_the_in_process_one(
    pool, reference, tmp_path, chunk_rows, coordinates
):
    """Same arithmetic in another order (chunks projected and factors, and with ``coordinates`` the grid's
    second moments, summed on the workers), so the element-wise tolerance stays tight: it is not a solve
    compared across BLAS kernels."""
    from engine.builds import build_gradient_index
    from index.gradient import load_gradient_index
    from interpret.config import GradientIndexConfig

    config = GradientIndexConfig(rank=4, damping=0.1, chunk_rows=chunk_rows, coordinates=coordinates)
    local = Engine(LocalBackend(Explainer(reference)), reference.examples, None, {})
    pooled = Engine(pool, reference.examples, None, {})
    build_gradient_index(local, tmp_path / "local", config)
    build_gradient_index(pooled, tmp_path / "pool", config)
    identity = pool.identity
    indexes = [
        load_gradient_index(tmp_path / name, identity.model_fingerprint, identity.data_fingerprint, 1)
        for name in ("local", "pool")
    ]
    vectors = [index.vectors() for index in indexes]
    assert vectors[0].shape[1] == (coordinates or vectors[0].shape[1])
    np.testing.assert_allclose(vectors[0], vectors[1], rtol=1e-6)
    assert indexes[0].projection.kind == "kfac"  # the factor fit ran on the workers: the same bases
    for name, basis in indexes[0].projection.bases.items():
        np.testing.assert_allclose(np.abs(basis), np.abs(indexes[1].projection.bases[name]), atol=1e-6)
    gradient = pool.projected_test_gradient(QUERY, None, 1, indexes[1].projection)
    expected = Explainer(reference).projected_test_gradient(QUERY, None, 1, indexes[1].projection)
    np.testing.assert_allclose(gradient, expected, rtol=1e-12, atol=1e-14)
    curvature = indexes[1].curvature  # the index solver: the inverse travels once, by reference
    s_test = pool.finish_s_test(
        pool.start_s_test(QUERY, None, 1, QueryConfig(solver="index"), None, curvature)
    )
    local_s_test = Explainer(reference).index_solve(
        QUERY, None, 1, curvature.projection, curvature.inverse, curvature.damping
    )
    np.testing.assert_allclose(pool.average(s_test), local_s_test, rtol=1e-10, atol=1e-12)


def test_the_heap_trim_returns_freed_pages_to_the_os():
    """Freed small allocations below a live one stay resident until the trim (glibc), then leave."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(
        """
        import os, time
        from interpret.concurrency import trim_heap_periodically

        def rss():
            return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

        chunks = [bytearray(4096) for _ in range(50_000)]  # 200 MB of malloc'd chunks
        pinned = bytearray(4096)  # allocated last: the heap cannot shrink below it by itself
        del chunks
        before = rss()
        assert trim_heap_periodically(0.05)
        time.sleep(1.0)
        print(before - rss())
        """
    )
    released = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert int(released.stdout.strip()) > 100 * 2**20, released


def test_an_evaluate_job_binds_every_worker_call_to_its_id_and_deadline(
    pool, reference, engine_dirs, tmp_path
):
    """Issue 23: an evaluate job called the workers without its context, so every call got a fresh id and
    its own deadline: a DELETEd recall job ran on, and ended `deadline_exceeded` naming another request."""
    from engine.builds import build_knn_index
    from engine.pipeline import knn_index_for
    from service.core import InfluenceService
    from service.jobs import Client
    from service.schemas import JobRequest
    from service.settings import Settings

    engine = Engine(pool, reference.examples, None, reference.card, None, str(engine_dirs[0]))
    build_knn_index(engine, tmp_path / "index")  # the pool's float64 features
    engine.index = knn_index_for(tmp_path / "index", pool.identity)
    inputs = [{"text": f"{QUERY} {n}", "label": n % 2} for n in range(8)]
    recall = {"task": "recall", "inputs": inputs, "methods": ["fastif"]}
    request = JobRequest(kind="evaluate", evaluate=recall)
    replacements, alice = pool.replacements, Client("key:alice", keyed=True)

    def settle(service: InfluenceService, job_id: str, timeout: float = 10.0):
        limit = time.monotonic() + timeout
        while (status := service.jobs.list(alice.id)[0]).finished_at is None:
            assert time.monotonic() < limit, f"job still {status.state} after {timeout} s"
            time.sleep(0.05)
        return status

    def wait_running(job_id: str) -> None:
        limit = time.monotonic() + 60
        while job_id not in pool.running_requests():  # the workers run the job's own id
            assert time.monotonic() < limit, "the job's id never ran on a worker"
            time.sleep(0.05)

    settings = Settings(
        _env_file=None,
        model_dir=engine_dirs[0],
        index_dir=None,
        gradient_index_dir=None,
        allow_full_scan=True,
    )
    service = InfluenceService(settings, engine)
    try:
        job = service.submit_job(request, alice)
        wait_running(job.id)
        service.jobs.cancel(job.id, alice.id)
        assert settle(service, job.id).state == "cancelled"
        limit = time.monotonic() + 10
        while pool.running_requests():  # every worker idle again, none replaced
            assert time.monotonic() < limit, "a worker still runs the cancelled job"
            time.sleep(0.05)
        assert pool.replacements == replacements
    finally:
        service.jobs.shutdown()

    settings = settings.model_copy(update={"job_deadline_s": {"evaluate": 2.0}})
    service = InfluenceService(settings, engine)
    try:
        started = time.monotonic()
        job = service.submit_job(request, alice)
        status = settle(service, job.id, timeout=15)
        assert status.state == "failed" and status.error.code == "deadline_exceeded"
        assert job.id in status.error.message  # the job's own deadline, not one call's
        assert time.monotonic() - started < 15 and pool.replacements == replacements
    finally:
        service.jobs.shutdown()


def test_a_sharded_gradient_index_is_searched_on_shard_actors_like_in_process(pool, reference, tmp_path):
    """A pooled engine holds no training vectors: each of the 3 shards is on its own actor, the query's
    answer is the in-process engine's (same rows, same scores)."""
    from engine.builds import build_gradient_index
    from engine.pipeline import gradient_index_for
    from index.shards import LocalShards
    from interpret.config import GradientIndexConfig
    from workers.shards import ShardActors

    local = Engine(LocalBackend(Explainer(reference)), reference.examples, None, {})
    build_gradient_index(local, tmp_path / "grad", GradientIndexConfig(rank=4, damping=0.1, shards=3))
    local.gradient_index = gradient_index_for(tmp_path / "grad", local.backend)
    pooled = Engine(pool, reference.examples, None, {}, gradient_index_for(tmp_path / "grad", pool))
    try:
        assert isinstance(local.gradient_index.shards, LocalShards)
        assert isinstance(pooled.gradient_index.shards, ShardActors)
        assert len(pooled.gradient_index.shards.actors) == 3
        config = QueryConfig(top=8)
        answers = [answer_query(engine, QUERY, config=config) for engine in (local, pooled)]
        assert [e.id for e in answers[1].helpful] == [e.id for e in answers[0].helpful]
        assert [e.id for e in answers[1].harmful] == [e.id for e in answers[0].harmful]
        np.testing.assert_allclose(answers[1].candidate_scores, answers[0].candidate_scores, rtol=1e-6)
    finally:
        pooled.gradient_index.close()


def test_workers_load_the_rows_a_gradient_index_added(ray_local, engine_dirs, data_dir, tmp_path):
    """A pooled engine over a grown index: every worker holds the added rows after the training data, so
    a full scan on the pool scores them as the local engine does."""
    from engine.builds import add_to_gradient_index, build_gradient_index
    from engine.pipeline import local_engine, pooled_engine
    from interpret.config import GradientIndexConfig
    from interpret.data import DataSpec
    from tests.conftest import synthetic_rows, write_tsv

    added = DataSpec(str(write_tsv(tmp_path / "new.tsv", synthetic_rows(20, seed=9))))
    config = GradientIndexConfig(rank=4, damping=0.1)
    build_gradient_index(local_engine(engine_dirs[0], dtype=torch.float64), tmp_path / "g", config)
    add_to_gradient_index(local_engine(engine_dirs[0], added, dtype=torch.float64), tmp_path / "g", added)
    local = local_engine(engine_dirs[0], dtype=torch.float64, gradient_index_dir=tmp_path / "g")
    settings = PoolSettings(num_workers=1)
    pooled = pooled_engine(
        engine_dirs[0], dtype="float64", settings=settings, gradient_index_dir=tmp_path / "g"
    )
    try:
        assert len(pooled.examples) == len(local.examples) == 116
        config = QueryConfig(top=4, method="full", k=None, lissa=LISSA.replace(num_repetitions=1))
        answers = [answer_query(engine, QUERY, config=config) for engine in (local, pooled)]
        assert len(answers[1].candidate_rows) == 116
        np.testing.assert_allclose(answers[1].candidate_scores, answers[0].candidate_scores, rtol=1e-8)
        gradient = [answer_query(engine, QUERY, config=QueryConfig(top=4)) for engine in (local, pooled)]
        assert [e.id for e in gradient[1].helpful] == [e.id for e in gradient[0].helpful]
    finally:
        pooled.shutdown()


def test_a_running_pool_takes_rows_added_under_it(ray_local, engine_dirs, tmp_path):
    """What the service's index_add job does: a pool started before the add loads the added rows on every
    worker and scores them as an engine started after it; a worker replaced later loads them too (and
    passes the check against the new data fingerprint)."""
    from engine.builds import add_to_gradient_index, build_gradient_index
    from engine.pipeline import gradient_index_for, local_engine, pooled_engine
    from interpret.checkpoint import card_data_spec, read_card
    from interpret.config import GradientIndexConfig
    from interpret.data import DataSpec
    from tests.conftest import synthetic_rows, write_tsv

    added = DataSpec(str(write_tsv(tmp_path / "new.tsv", synthetic_rows(12, seed=11))))
    build_gradient_index(
        local_engine(engine_dirs[0], dtype=torch.float64), tmp_path / "g", GradientIndexConfig()
    )
    settings = PoolSettings(num_workers=2)
    pooled = pooled_engine(
        engine_dirs[0], dtype="float64", settings=settings, gradient_index_dir=tmp_path / "g"
    )
    try:
        grown = add_to_gradient_index(
            local_engine(engine_dirs[0], added, dtype=torch.float64), tmp_path / "g", added
        )
        train = card_data_spec(read_card(engine_dirs[0]))
        pooled.load_added_rows(train.with_absolute_source(), grown.added_rows)
        pooled.gradient_index = gradient_index_for(tmp_path / "g", pooled.backend)
        assert pooled.identity.data_fingerprint == grown.data_fingerprint and pooled.num_examples == 108
        local = local_engine(engine_dirs[0], dtype=torch.float64, gradient_index_dir=tmp_path / "g")
        config = QueryConfig(top=4, method="full", k=None, lissa=LISSA.replace(num_repetitions=2))
        expected = answer_query(local, QUERY, config=config)
        answered = answer_query(pooled, QUERY, config=config)
        assert len(answered.candidate_rows) == 108
        np.testing.assert_allclose(answered.candidate_scores, expected.candidate_scores, rtol=1e-8)
        ray.kill(pooled.backend.workers.actors[0])
        replaced = answer_query(pooled, QUERY, config=config)  # a repetition lands on the new worker
        np.testing.assert_allclose(replaced.candidate_scores, expected.candidate_scores, rtol=1e-8)
        assert pooled.backend.replacements >= 1
    finally:
        pooled.shutdown()
