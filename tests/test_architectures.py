"""Any classifier: the generic path (the whole HF model under ``functional_call``) on tiny random models
of fourteen families (``tests/families.py``), against the HF forward, exact Hessians and the fast path,
in float64."""

import functools
import json

import numpy as np
import pytest
import torch

from interpret.influence import ExampleStates, exact_s_test, influence_scores, training_hessian
from interpret.influence.exact import block_hessian
from interpret.influence.objective import (
    hessian_vector_product,
    loss_gradient,
    mean_loss,
    per_example_gradients,
)
from interpret.influence.preconditioner import (
    gradient_index_scores,
    inverse_damped,
    precondition,
    projected_hessian,
)
from interpret.influence.projection import Projector, eigen_bases
from interpret.models import TrackedModel, has_fast_path
from tests.exactness import assert_same_solution, assert_solves, finite_difference_hvp, map_amplification
from tests.families import DECODERS, FAMILIES, family_classifier

FAST = ("bert", "roberta", "xlm-roberta")
GENERIC = [f for f in FAMILIES if f not in FAST]


@pytest.fixture(scope="module")
def rows(train_set):
    return train_set.subset(range(24))


def _tracked(family, scope=1, **kwargs):
    """A tiny float64 ``family`` classifier with its family's kind of tokenizer (``tests/families.py``)."""
    return TrackedModel(*family_classifier(family), tracked_layers=scope, **kwargs)


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_are_the_hf_forward_and_do_not_depend_on_padding(family, rows):
    """Same arithmetic as the model's own forward (element-wise 1e-12); a padded row gives its unpadded
    logits (right padding: a causal model's positions never shift)."""
    tracked = _tracked(family)
    assert tracked.generic == (family not in FAST)
    encoded = tracked.encode(rows.texts[:6])
    assert int(encoded["attention_mask"].sum(1).min()) < encoded["input_ids"].shape[1]  # some rows padded
    theta = tracked.parameters()
    states = tracked.frozen(encoded)
    torch.testing.assert_close(
        tracked.logits(theta, states), tracked.model(**encoded).logits, rtol=0, atol=1e-12
    )
    for i in range(6):
        alone = tracked.frozen(tracked.encode(rows.texts[i : i + 1]))
        torch.testing.assert_close(
            tracked.logits(theta, alone)[0], tracked.logits(theta, states)[i], rtol=1e-9, atol=1e-12
        )


HEADS = {
    "bert": ["bert.pooler.dense", "classifier"],
    "roberta": ["classifier.dense", "classifier.out_proj"],
    "xlm-roberta": ["classifier.dense", "classifier.out_proj"],  # registered before the encoder
    "distilbert": ["pre_classifier", "classifier"],
    "deberta-v2": ["pooler.dense", "classifier"],  # not encoder.rel_embeddings: it runs below the blocks
    "electra": ["classifier.dense", "classifier.out_proj"],
    "albert": ["albert.pooler", "classifier"],
    "mpnet": ["classifier.dense", "classifier.out_proj"],  # not encoder.relative_attention_bias
    "modernbert": ["model.final_norm", "head.dense", "head.norm", "classifier"],
    "gpt2": ["transformer.ln_f", "score"],
    "llama": ["model.norm", "score"],
    "qwen2": ["model.norm", "score"],
    "bart": ["classification_head.dense", "classification_head.out_proj"],  # not layernorm_embedding
    "opt": ["model.decoder.final_layer_norm", "score"],
}
"""What runs after the last block, by module name, read off each family's source (not off our code)."""
BLOCKS = {
    "bert": "bert.encoder.layer.", "roberta": "roberta.encoder.layer.",
    "xlm-roberta": "roberta.encoder.layer.", "distilbert": "distilbert.transformer.layer.",
    "deberta-v2": "deberta.encoder.layer.",
    "electra": "electra.encoder.layer.", "albert": "albert.encoder.albert_layer_groups.",
    "mpnet": "mpnet.encoder.layer.", "modernbert": "model.layers.", "gpt2": "transformer.h.",
    "llama": "model.layers.", "qwen2": "model.layers.", "bart": "model.decoder.layers.",
    "opt": "model.decoder.layers.",
}  # fmt: skip


def _modules(names: list[str]) -> set[str]:
    return {name.rsplit(".", 1)[0] for name in names}


@pytest.mark.parametrize("family", FAMILIES)
def test_the_tracked_set_is_what_runs_after_the_blocks(family):
    """By parameter name: at ``tracked_layers=0`` the head alone (what runs after the last block, wherever
    it is registered); at 1 the head and the last block; nothing that runs below the first block."""
    model, tokenizer = family_classifier(family)
    head_only = TrackedModel(model, tokenizer, 0, generic=True)
    assert _modules(head_only.parameter_names) == set(HEADS[family])
    assert head_only.tracked_layer_modules() == []
    one = TrackedModel(model, tokenizer, 1, generic=True)
    last = f"{BLOCKS[family]}{len(one._blocks) - 1}."
    assert one._block_prefix == BLOCKS[family]
    assert {n for n in one.parameter_names if n not in head_only.parameter_names} == {
        n for n, _ in model.named_parameters() if n.startswith(last)
    }
    assert len(one.tracked_layer_modules()) == 1
    classifier = TrackedModel(model, tokenizer, "classifier", generic=True)
    assert _modules(classifier.parameter_names) == {HEADS[family][-1]}


def test_an_encoder_decoder_says_which_stack_it_tracks_and_how_to_name_the_other(caplog):
    """BART: a number of blocks counts the decoder's (they run last); the note names the encoder's last
    block as a tracked set, and that tracked set is the encoder's block and the head."""
    bart = TrackedModel(*family_classifier("bart"), tracked_layers=1)
    assert all(".encoder." not in name for name in bart.parameter_names)
    assert "modules:model.encoder.layers.1.*,classification_head" in caplog.text
    other = TrackedModel(
        *family_classifier("bart"), tracked_layers="modules:model.encoder.layers.1.*,classification_head"
    )
    assert {name.split(".")[1] for name in other.parameter_names if name.startswith("model.")} == {"encoder"}


def test_blocks_shared_across_depth_clamp_tracked_layers_with_a_note(caplog):
    """ALBERT runs one layer ``num_hidden_layers`` times: asking for 2 blocks tracks its one, and says so;
    a list of distinct blocks still refuses more than it has."""
    albert = TrackedModel(*family_classifier("albert"), tracked_layers=2)
    assert albert.tracked_layers == 1 and "shares its blocks' weights" in caplog.text
    with pytest.raises(ValueError, match="tracked_layers"):
        TrackedModel(*family_classifier("bert"), tracked_layers=3, generic=True)


@pytest.mark.parametrize("family", FAMILIES)
def test_hvp_and_forward_mode_scores_are_exact(family, rows):
    """The explicit Hessian against finite differences; the HVP against it; forward-mode scores against
    per-row autograd gradients: two formulas, no solve (1e-8 relative, float64)."""
    tracked = _tracked(family, scope=0)
    theta, train = tracked.parameters(), ExampleStates(tracked, rows)
    states, labels = train.load(range(12))
    loss = lambda t: mean_loss(tracked, t, states, labels)  # noqa: E731
    explicit = block_hessian(loss, theta)
    vector = torch.randn_like(theta)
    reference = finite_difference_hvp(loss, theta, vector)
    assert float((explicit @ vector - reference).norm() / reference.norm()) < 1e-6  # an independent check
    torch.testing.assert_close(
        hessian_vector_product(tracked, theta, states, labels, vector),
        explicit @ vector,
        rtol=1e-8,
        atol=1e-12,
    )
    s_tests = torch.randn(2, tracked.num_parameters, dtype=theta.dtype)
    forward = influence_scores(tracked, theta, s_tests, states, labels, method="jvp")
    reverse = -(s_tests @ per_example_gradients(tracked, theta, states, labels).T)
    torch.testing.assert_close(forward, reverse, rtol=1e-8, atol=1e-12)


def _exact_index_check(tracked, rows, name: str) -> None:
    """Projection-free, Hessian-preconditioned index scores equal explicit-Hessian influence on the
    coordinates the index keeps (its linear layers)."""
    theta, train = tracked.parameters(), ExampleStates(tracked, rows)
    damping = 0.05
    projector = Projector(tracked, None)
    selection = projector.dense_matrix()
    full_hessian = training_hessian(tracked, theta, train)
    states, labels = train.load(np.arange(len(rows)))
    projected = projector.gradients(theta, states, labels)
    kept = selection.abs().sum(0) > 0
    exact_gradients = per_example_gradients(tracked, theta, states, labels)
    torch.testing.assert_close(projected, exact_gradients @ selection.T, rtol=1e-9, atol=1e-12)  # no solve
    stored = precondition(projected, inverse_damped(projected_hessian(full_hessian, selection), damping))
    test_states, test_labels = train.load([3])
    scores = gradient_index_scores(projector.gradients(theta, test_states, test_labels)[0], stored)
    v = loss_gradient(tracked, theta, test_states, test_labels)[kept]
    damped = full_hessian[kept][:, kept] + damping * torch.eye(int(kept.sum()), dtype=torch.float64)
    s_test = exact_s_test(full_hessian[kept][:, kept], v, damping)
    assert_solves(damped, s_test, v)
    expected = -(exact_gradients[:, kept] @ s_test)
    amplification = map_amplification(exact_gradients[:, kept], s_test)
    assert_same_solution(scores, expected, damped, f"{name} index scores", amplification)


@pytest.mark.parametrize("family", ["distilbert", "deberta-v2", "electra", "gpt2", "qwen2", "albert"])
def test_the_unprojected_hessian_index_is_the_exact_influence(family, rows):
    _exact_index_check(_tracked(family, scope=0), rows, family)


@pytest.mark.parametrize(
    ("family", "patterns"),
    [("bert", "*.layer.1.attention.output.dense,classifier"), ("gpt2", "*.h.1.mlp.c_fc,score")],
)
def test_the_influence_over_tracked_modules_is_the_exact_influence(family, patterns, rows):
    """``modules:PATTERN,...`` (a block's middle, not its end, with the head): the projection-free,
    Hessian-preconditioned index over exactly those parameters equals the explicit-Hessian influence."""
    model, tokenizer = family_classifier(family)
    model.set_attn_implementation("eager")  # as load_classifier loads: double backward needs it on CPU
    tracked = TrackedModel(model, tokenizer, f"modules:{patterns}")
    named = dict(model.named_parameters())
    assert tracked.num_parameters == sum(named[name].numel() for name in tracked.parameter_names)
    _exact_index_check(tracked, rows.subset(range(12)), f"{family} {patterns}")


@pytest.mark.slow  # DeBERTa's block alone takes 20 s of explicit Hessian
@pytest.mark.parametrize("family", ["deberta-v2", "xlm-roberta", "albert", "gpt2", "bart"])
def test_with_a_block_tracked_the_unprojected_index_is_the_exact_influence(family, rows):
    """``tracked_layers=1``: the last block's attention and MLP weights (relative positions, a head
    registered first, a layer shared across depth, a decoder, an encoder-decoder) in the explicit Hessian.
    Eager attention, as ``load_classifier`` loads: PyTorch's CPU flash kernel has no double backward."""
    model, tokenizer = family_classifier(family)
    model.set_attn_implementation("eager")
    _exact_index_check(TrackedModel(model, tokenizer, 1), rows.subset(range(12)), family)


@pytest.mark.parametrize("family", FAMILIES)
def test_with_norms_kept_the_unprojected_index_is_every_tracked_gradient(family, rows):
    """Every tracked coordinate exactly once (bias-free LayerNorms, RMSNorms and OPT's token-flattened
    feed-forward layers included), and the factored per-example gradients are autograd's."""
    tracked = _tracked(family, scope=1)
    theta, train = tracked.parameters(), ExampleStates(tracked, rows)
    states, labels = train.load(range(6))
    projector = Projector(tracked, None, layer_norms=True)
    dense = projector.dense_matrix()
    assert bool((dense.sum(0) == 1).all() and (dense.sum(1) == 1).all()), family
    exact = per_example_gradients(tracked, theta, states, labels)
    torch.testing.assert_close(
        projector.gradients(theta, states, labels), exact @ dense.T, rtol=1e-9, atol=1e-12
    )


@pytest.mark.parametrize("family", ["gpt2", "albert", "opt", "modernbert", "llama"])
def test_kfac_factors_sum_over_conv1d_and_shared_layers(family, rows):
    """GPT-2's ``Conv1D`` stores ``[in, out]``; ALBERT calls one layer per block; OPT flattens tokens in its
    feed-forward layers; ModernBERT's norms have no bias, Llama's are RMSNorms. The factored projection
    still equals projecting the materialised gradient."""
    tracked = _tracked(family, scope=1)
    theta, train = tracked.parameters(), ExampleStates(tracked, rows)
    states, labels = train.load(range(8))
    bases = eigen_bases(Projector(tracked, 3).factors(theta, states, labels), 3)
    projector = Projector(tracked, 3, bases=bases, layer_norms=True)
    dense = projector.dense_matrix()
    exact = per_example_gradients(tracked, theta, states, labels)
    torch.testing.assert_close(
        projector.gradients(theta, states, labels), exact @ dense.T, rtol=1e-9, atol=1e-12
    )
    vector = torch.randn_like(theta)
    torch.testing.assert_close(projector.project_vector(vector), dense @ vector, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(
        projector.unproject(dense @ vector), dense.T @ (dense @ vector), rtol=1e-9, atol=1e-12
    )


@pytest.mark.parametrize("scope", ["classifier", 0, 1])
@pytest.mark.parametrize("family", FAST)
def test_the_generic_path_equals_the_fast_path(family, rows, scope):
    """Where both exist (BERT, RoBERTa, XLM-R), the generic path tracks the same parameters and gives the
    fast path's logits, gradients and scores to 1e-6 relative in float64 (the two run the same layers, the
    fast one with its own additive mask). XLM-R registers its head before its encoder: execution order,
    not registration order, must find it."""
    model, tokenizer = family_classifier(family)
    model.set_attn_implementation("eager")  # as load_classifier loads: SDPA on CPU has no forward-mode AD
    train_set = rows
    assert has_fast_path(model)
    fast = TrackedModel(model, tokenizer, tracked_layers=scope)
    generic = TrackedModel(model, tokenizer, tracked_layers=scope, generic=True)
    assert fast.parameter_names == generic.parameter_names
    theta = fast.parameters()
    rows = np.arange(20)
    fast_states, labels = ExampleStates(fast, train_set).load(rows)
    generic_states, _ = ExampleStates(generic, train_set).load(rows)
    torch.testing.assert_close(
        generic.logits(theta, generic_states), fast.logits(theta, fast_states), rtol=1e-6, atol=1e-10
    )
    torch.testing.assert_close(
        per_example_gradients(generic, theta, generic_states, labels),
        per_example_gradients(fast, theta, fast_states, labels),
        rtol=1e-6,
        atol=1e-10,
    )
    s_test = torch.randn(fast.num_parameters, dtype=torch.float64)
    torch.testing.assert_close(
        influence_scores(generic, theta, s_test, generic_states, labels),
        influence_scores(fast, theta, s_test, fast_states, labels),
        rtol=1e-6,
        atol=1e-10,
    )


@pytest.mark.parametrize("family", DECODERS)
def test_a_decoder_without_a_pad_token_pads_with_end_of_text(family, rows):
    model, tokenizer = family_classifier(family)
    model.config.pad_token_id = None
    tokenizer.pad_token = None
    tracked = TrackedModel(model, tokenizer, tracked_layers=0)
    assert model.config.pad_token_id == tokenizer.pad_token_id == tokenizer.eos_token_id  # told to the config
    assert tracked.probabilities(rows.texts[:4]).shape == (4, 2)


@pytest.mark.parametrize("family", ["electra", "qwen2"])
def test_multi_class_text_pairs(family, train_set):
    model, tokenizer = family_classifier(family, num_labels=4)
    tracked = TrackedModel(model, tokenizer, tracked_layers=1)
    texts, pairs = train_set.texts[:5], train_set.texts[5:10]
    encoded = tracked.encode(texts, pairs)
    logits = tracked.logits(tracked.parameters(), tracked.frozen(encoded))
    assert logits.shape == (5, 4)
    torch.testing.assert_close(logits, model(**encoded).logits, rtol=0, atol=1e-12)
    assert ("token_type_ids" in encoded) == (family == "electra")  # where the family's tokenizer gives them


@pytest.mark.parametrize("family", ["deberta-v2", "gpt2"])
def test_a_four_label_pair_task_trains_indexes_and_answers(family, tmp_path):
    """Issue 38: a 4-label text-pair task (label = 2 x the premise's sentiment + the hypothesis's) on a
    non-BERT encoder and a decoder: influence train's functions (over a two-label base: its head is
    replaced), both indexes, a gradient and a fastif query on a pair; the answer explains one of the four
    labels and its rows carry their pairs."""
    from engine.builds import build_gradient_index, build_knn_index
    from engine.pipeline import answer_query, local_engine
    from interpret.config import GradientIndexConfig, QueryConfig
    from interpret.data import DataSpec, load_examples
    from interpret.influence import LissaConfig
    from interpret.training import TrainConfig, save_classifier, train_classifier
    from tests.conftest import synthetic_rows

    first, second = synthetic_rows(160, seed=11), synthetic_rows(160, seed=12)
    lines = [f"{a}\t{b}\t{2 * ya + yb}" for (a, ya), (b, yb) in zip(first, second, strict=True)]
    (tmp_path / "pairs.tsv").write_text("text\tpair\tlabel\n" + "\n".join(lines) + "\n")
    spec = DataSpec(str(tmp_path / "pairs.tsv"), pair_column="pair")
    rows = load_examples(spec)
    assert rows.num_labels == 4 and rows.pairs is not None
    model, tokenizer = family_classifier(family, dtype=torch.float32)
    model.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    config = TrainConfig(epochs=2, batch_size=16, learning_rate=3e-3)
    tracked, report = train_classifier(str(tmp_path / "base"), rows, 1, config, max_length=48, progress=False)
    assert int(tracked.model.config.num_labels) == 4 and np.isfinite(report.final_loss)
    save_classifier(tmp_path / "model", tracked, str(tmp_path / "base"), rows, config, report, spec)
    build_knn_index(local_engine(tmp_path / "model"), tmp_path / "knn")
    build_gradient_index(local_engine(tmp_path / "model"), tmp_path / "grad", GradientIndexConfig(rank=4))
    engine = local_engine(
        tmp_path / "model", index_dir=tmp_path / "knn", gradient_index_dir=tmp_path / "grad"
    )
    assert engine.identity.num_labels == 4 and engine.identity.takes_pairs
    lissa = LissaConfig(recursion_depth=20, batch_size=4, damping=0.1)
    for query in (QueryConfig(top=3), QueryConfig(method="fastif", k=40, top=3, lissa=lissa)):
        answer = answer_query(engine, "a great and lovely film", "the plot was dull", None, query)
        assert answer.label_used in range(4) and len(answer.probabilities) == 4, query.method
        assert len(answer.helpful) + len(answer.harmful) > 0 and np.isfinite(answer.candidate_scores).all()
        assert all(example.text_pair for example in answer.helpful + answer.harmful)


def test_segment_ids_follow_the_tokenizer_not_a_config_field(train_set):
    """A model whose config has no ``type_vocab_size`` (XLNet's has none) still gets the segment ids its
    tokenizer returns, in influence, saliency and attacks alike; a tokenizer that returns none gives none."""
    from interpret.attacks.base import encode_ids, losses
    from interpret.classifier import TextClassifier

    model, tokenizer = family_classifier("bert")
    del model.config.type_vocab_size
    tracked = TrackedModel(model, tokenizer, tracked_layers=1)
    texts, pairs = train_set.texts[:3], train_set.texts[3:6]
    encoded = tracked.encode(texts, pairs)
    assert int(encoded["token_type_ids"].max()) == 1  # the pair's boundary
    logits = tracked.logits(tracked.parameters(), tracked.frozen(encoded))
    torch.testing.assert_close(logits, model(**encoded).logits, rtol=0, atol=1e-12)
    without = {k: v for k, v in encoded.items() if k != "token_type_ids"}
    with torch.no_grad():
        assert float((logits - model(**without).logits).abs().max()) > 1e-6  # the boundary matters
    classifier = TextClassifier(model, tokenizer)
    rows = [encode_ids(classifier, text, pair) for text, pair in zip(texts, pairs, strict=True)]
    expected = torch.nn.functional.cross_entropy(logits, torch.zeros(3, dtype=torch.long), reduction="none")
    np.testing.assert_allclose(losses(classifier, rows, [0, 0, 0]), expected.detach().numpy(), rtol=1e-9)
    tokenizer.model_input_names = ["input_ids", "attention_mask"]
    assert "token_type_ids" not in tracked.encode(texts, pairs)


# ------------------------------------------------------------------------------ end to end, per family


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory):
    """Per family: a random-weight base folder, fine-tuned by ``influence train``'s functions on 200 rows
    (a fresh head, the last block and the head tracked) and saved with its card."""
    from interpret.data import DataSpec, load_examples
    from interpret.training import TrainConfig, save_classifier, train_classifier
    from tests.conftest import synthetic_rows, write_tsv

    data = tmp_path_factory.mktemp("rows200")
    spec = DataSpec(str(write_tsv(data / "train.tsv", synthetic_rows(200, seed=5))))
    rows = load_examples(spec)

    @functools.cache
    def make(family):
        base = tmp_path_factory.mktemp(f"{family}-base")
        model, tokenizer = family_classifier(family, dtype=torch.float32)
        model.save_pretrained(base)
        tokenizer.save_pretrained(base)
        config = TrainConfig(epochs=2, batch_size=16, learning_rate=3e-3)
        tracked, report = train_classifier(str(base), rows, 1, config, max_length=32, progress=False)
        assert np.isfinite(report.final_loss)
        folder = tmp_path_factory.mktemp(family)
        save_classifier(folder, tracked, str(base), rows, config, report, spec)
        return folder

    return make


@pytest.mark.parametrize("family", FAMILIES)
def test_every_method_answers_on_every_family(family, family_dirs, tmp_path):
    """Trained on 200 rows, then: both index kinds, the three query kinds, five saliency maps and three
    attacks give sane answers, and no attack splits a word of the family's kind of tokenizer."""
    from engine.builds import build_gradient_index
    from engine.pipeline import answer_query, local_engine
    from index import build_index
    from interpret.attacks import hotflip, input_reduction, search_trigger
    from interpret.attacks.base import word_start_rule
    from interpret.config import GradientIndexConfig, QueryConfig
    from interpret.influence import LissaConfig
    from interpret.models import encode_features, model_fingerprint
    from interpret.saliency import SALIENCY_METHODS, TextClassifier, saliency

    folder = family_dirs(family)
    engine = local_engine(folder)
    explainer = engine.backend.explainer
    examples = engine.examples
    assert len(examples) == 200 and explainer.tracked.generic == (family not in FAST)
    features = encode_features(
        TrackedModel(explainer.tracked.model, explainer.tracked.tokenizer, 0), examples.texts, progress=False
    )
    assert np.isfinite(features).all() and features.shape == (len(examples), 16)
    build_index(features, tmp_path / "knn", model_fingerprint(explainer.tracked.model), examples.fingerprint)
    build_gradient_index(engine, tmp_path / "grad", GradientIndexConfig(rank=4, damping=0.1))
    engine = local_engine(folder, index_dir=tmp_path / "knn", gradient_index_dir=tmp_path / "grad")
    lissa = LissaConfig(recursion_depth=5, batch_size=4, damping=0.1, scale=500.0)
    text = "the plot was boring and fun"
    for config in (
        QueryConfig(top=3),
        QueryConfig(top=3, rerank=6, lissa=lissa),
        QueryConfig(method="fastif", k=60, top=3, lissa=lissa),  # enough candidates of each sign
    ):
        answer = answer_query(engine, text, config=config)
        assert len(answer.helpful) == 3 and len(answer.harmful) == 3, config
        assert np.isfinite(answer.candidate_scores).all()
    classifier = TextClassifier(explainer.tracked.model, explainer.tracked.tokenizer, max_length=32)
    for method in SALIENCY_METHODS:
        result = saliency(classifier, text, method)
        assert len(result.scores) == len(result.tokens) and np.isfinite(result.scores).all(), method
        words = {w for w in result.word_ids if w is not None}
        assert words == set(range(6)), method  # grouped by the tokenizer's own words, whatever its pieces
    for sentence in (text, "a gorgeous witty movie", "bad"):  # integrated gradients completes its path
        result = saliency(classifier, sentence, "integrated_gradients")
        assert result.extra["completeness_gap"] < 0.05 and not result.warnings, (sentence, result.extra)
    starts_word = word_start_rule(classifier.tokenizer)
    flipped = hotflip(classifier, text, max_flips=2)
    assert flipped.edits and flipped.final[0] != flipped.original
    assert all(starts_word(edit.after) for edit in flipped.edits)  # one whole word in, one whole word out
    assert {edit.before for edit in flipped.edits} <= set(text.split())
    reduced = input_reduction(classifier, text)
    removed = classifier.tokenizer.convert_tokens_to_string([e.before for e in reduced.edits]).split()
    assert len(reduced.final[0]) == len(reduced.original) - len(reduced.edits)
    assert set(removed) <= set(text.split())  # whole words only
    trigger = search_trigger(
        classifier, examples.texts[:8], list(examples.labels[:8]), num_tokens=2, iterations=1
    )
    assert len(trigger.trigger) == 2 and np.isfinite(trigger.loss_trace).all()
    assert all(starts_word(token) for token in trigger.trigger), trigger.trigger


@pytest.mark.parametrize("family", ["modernbert", "opt", "bart"])
def test_the_families_that_failed_a_step_answer_at_the_default_knobs(family, family_dirs, tmp_path):
    """Issue 36's run: OPT's gradient-index build, ModernBERT's LiSSA at the default scale and BART's
    saliency failed. Every default here: the index's rank, preconditioner and damping; LiSSA's J=1000,
    B=1 and its measured scale (reported)."""
    from engine.builds import build_gradient_index
    from engine.pipeline import answer_query, local_engine
    from interpret.config import GradientIndexConfig, QueryConfig
    from interpret.saliency import TextClassifier, saliency

    folder = family_dirs(family)
    build_gradient_index(local_engine(folder), tmp_path / "grad", GradientIndexConfig())
    engine = local_engine(folder, gradient_index_dir=tmp_path / "grad")
    text = "the plot was boring and fun"
    for config in (QueryConfig(), QueryConfig(method="fastif", k=None)):
        answer = answer_query(engine, text, config=config)
        assert len(answer.helpful) == 10 and np.isfinite(answer.candidate_scores).all(), config.method
    assert answer.lissa is not None and answer.lissa.scale_measured
    assert np.isfinite(answer.lissa.norm_traces).all() and answer.lissa.config.scale > 0
    tracked = engine.backend.explainer.tracked
    result = saliency(TextClassifier(tracked.model, tracked.tokenizer), text, "integrated_gradients")
    assert np.isfinite(result.scores).all()


@pytest.mark.slow  # an explicit Hessian of the last block over 200 rows: about a minute each
@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_the_hessian_gradient_index_is_the_exact_influence_on_a_trained_tiny_model(
    family, family_dirs, tmp_path
):
    """Against the exact influence (explicit Hessian over all 200 rows, every row scored, float64): the
    index preconditioned by the projected training Hessian, at the default rank and with LayerNorms
    dropped, ranks the rows at Spearman >= 0.999 and finds 9 of the exact top 10 helpful rows, on an
    encoder and a decoder alike. (The default ``fisher`` does not reach this: ``resolved_preconditioner``.)"""
    from scipy.stats import spearmanr

    from engine.builds import build_gradient_index
    from engine.pipeline import answer_query, gradient_index_for, local_engine
    from interpret.config import GradientIndexConfig, QueryConfig

    engine = local_engine(family_dirs(family), dtype=torch.float64)
    manifest = build_gradient_index(engine, tmp_path / "grad", GradientIndexConfig(preconditioner="hessian"))
    assert manifest.spec["preconditioner"] == "hessian" and manifest.spec["rank"] == 16
    # The same explainer: its training Hessian, built for the index, is the exact answer's too.
    engine.gradient_index = gradient_index_for(tmp_path / "grad", engine.backend, False)
    for text in ("the plot was boring and fun", "a gorgeous witty movie"):
        exact = answer_query(engine, text, config=QueryConfig(method="full", exact=True, top=100))
        index = answer_query(engine, text, config=QueryConfig(top=100))
        truth = dict(zip(exact.candidate_rows.tolist(), exact.candidate_scores.tolist(), strict=True))
        found = dict(zip(index.candidate_rows.tolist(), index.candidate_scores.tolist(), strict=True))
        assert set(found) == set(truth) == set(range(200))
        rows = sorted(truth)
        rho = spearmanr([found[r] for r in rows], [truth[r] for r in rows])[0]
        top = {e.row for e in exact.helpful[:10]} & {e.row for e in index.helpful[:10]}
        assert rho >= 0.999 and len(top) >= 9, (text, rho, len(top))


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_answers_not_shapes_on_a_separable_task(family, tmp_path):
    """A tiny model trained on a toy task whose label is the majority sentiment word: a clear sentence's
    top 20 helpful rows share its label more often than chance (1/2) and than its harmful rows do, HotFlip
    lowers the confidence it attacks (or flips the label), and Input Reduction keeps the label while it
    removes words."""
    from engine.builds import build_gradient_index
    from engine.pipeline import answer_query, local_engine
    from interpret.attacks import hotflip, input_reduction
    from interpret.config import GradientIndexConfig, QueryConfig
    from interpret.data import DataSpec, load_examples
    from interpret.saliency import TextClassifier
    from interpret.training import TrainConfig, save_classifier, train_classifier
    from tests.conftest import synthetic_rows, write_tsv

    spec = DataSpec(str(write_tsv(tmp_path / "train.tsv", synthetic_rows(200, seed=5))))
    rows = load_examples(spec)
    model, tokenizer = family_classifier(family, dtype=torch.float32)
    model.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    config = TrainConfig(epochs=40, batch_size=16, learning_rate=3e-3)
    tracked, report = train_classifier(str(tmp_path / "base"), rows, 1, config, max_length=32, progress=False)
    save_classifier(tmp_path / "model", tracked, str(tmp_path / "base"), rows, config, report, spec)
    engine = local_engine(tmp_path / "model")
    build_gradient_index(engine, tmp_path / "grad", GradientIndexConfig(rank=4))
    engine = local_engine(tmp_path / "model", gradient_index_dir=tmp_path / "grad")
    predicted = engine.backend.explainer.tracked.probabilities(rows.texts).argmax(1)
    assert (predicted == np.asarray(rows.labels)).mean() >= 0.9, "the toy task was not learned"
    classifier = TextClassifier.of(engine.backend.explainer.tracked)
    for text, label in (("a great and lovely film", 1), ("the plot was dull and boring", 0)):
        answer = answer_query(engine, text, config=QueryConfig(top=20))
        assert answer.predicted_label == label
        helpful = np.mean([e.label == label for e in answer.helpful])
        harmful = np.mean([e.label == label for e in answer.harmful])
        assert helpful >= 0.6 and helpful > harmful, (text, helpful, harmful)  # measured: 0.6-0.95
        flipped = hotflip(classifier, text, max_flips=2)
        assert flipped.outputs_after[-1][label] < flipped.outputs_before[label]
        reduced = input_reduction(classifier, text)
        assert reduced.edits and int(np.argmax(reduced.outputs_after[-1])) == label


def test_a_zero_baseline_under_a_scale_invariant_norm_is_flagged_and_auto_leaves_it(family_dirs):
    """Qwen2's RMSNorm makes ``f(alpha x)`` flat for ``alpha > 0``: from the zero embedding the path never
    completes, the map says so; ``auto`` moves to the mask baseline and reports the gap it left."""
    from engine.pipeline import local_engine
    from interpret.saliency import TextClassifier, saliency
    from interpret.saliency.gradient import FLAG_GAP

    tracked = local_engine(family_dirs("qwen2")).backend.explainer.tracked
    classifier = TextClassifier(tracked.model, tracked.tokenizer)
    zero = saliency(classifier, "a gorgeous witty movie", "integrated_gradients", baseline="zero")
    assert zero.extra["completeness_gap"] > FLAG_GAP and "completeness gap" in zero.warnings[0]
    auto = saliency(classifier, "a gorgeous witty movie", "integrated_gradients")
    assert auto.extra["baseline"] == "mask" and auto.extra["zero_baseline_gap"] > FLAG_GAP
    special = [i for i, word in enumerate(auto.word_ids) if word is None]
    assert all(auto.raw_scores[i] == 0 for i in special)  # kept in the baseline: no attribution


# ------------------------------------------------------------------------------ tracked sets: modules, lora


LORA_TARGETS = {"bert": ["query", "value"], "qwen2": ["q_proj", "v_proj"]}


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    """Per family: a base folder and a LoRA adapter folder over it (peft's SEQ_CLS task: the head is
    trained whole, ``modules_to_save``), with non-zero B matrices so the adapter changes the logits."""
    from peft import LoraConfig, TaskType, get_peft_model

    def make(family, dtype=torch.float64):
        folder = tmp_path_factory.mktemp(f"{family}-lora")
        model, tokenizer = family_classifier(family, dtype=dtype)
        model.save_pretrained(folder / "base")
        tokenizer.save_pretrained(folder / "base")
        model.name_or_path = str(folder / "base")  # what peft writes as the adapter's base
        config = LoraConfig(
            task_type=TaskType.SEQ_CLS, r=2, lora_alpha=4, target_modules=LORA_TARGETS[family]
        )
        adapted = get_peft_model(model, config)  # SDPA attention: float64 throughout (tests/families.py)
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for name, param in adapted.named_parameters():
                if "lora_B" in name:
                    param.copy_(0.3 * torch.randn(param.shape, generator=generator, dtype=param.dtype))
        adapted.save_pretrained(folder / "adapter")
        return folder / "adapter", adapted.eval(), tokenizer

    return make


@pytest.mark.parametrize("family", ["bert", "qwen2"])
def test_lora_tracks_the_adapter_and_its_influence_is_exact(family, adapters, rows):
    from interpret.models import is_adapter, load_classifier

    folder, adapted, tokenizer = adapters(family)
    trainable = adapted.get_nb_trainable_parameters()[0]
    # the saved adapter folder loads over its base: same tracked set, same logits
    model, loaded_tokenizer = load_classifier(str(folder), dtype=torch.float64)
    loaded = TrackedModel(model, loaded_tokenizer, "lora")
    assert loaded.generic and loaded.num_parameters == trainable  # what peft itself trains
    assert all(is_adapter(name) for name in loaded.parameter_names)
    encoded = loaded.encode(rows.texts[:4])
    logits = loaded.logits(loaded.parameters(), loaded.frozen(encoded))
    torch.testing.assert_close(logits, model(**encoded).logits, rtol=0, atol=1e-12)
    torch.testing.assert_close(logits, adapted(**encoded).logits, rtol=1e-6, atol=1e-7)  # eager vs SDPA
    # exactness on the in-memory adapter (SDPA: Qwen2's eager softmax is float32, tests/families.py)
    tracked = TrackedModel(adapted, tokenizer, "lora")
    assert tracked.parameter_names == loaded.parameter_names
    # the Hessian is a double backward, which CPU's fused SDPA kernels lack; the math kernel has it
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
        _exact_index_check(tracked, rows, f"{family} lora")
    with pytest.raises(ValueError, match="no adapter weights"):
        TrackedModel(*family_classifier(family), tracked_layers="lora")


def test_a_lora_adapter_answers_end_to_end_and_its_index_is_refused_for_another_set(adapters, tmp_path):
    from engine.builds import build_gradient_index
    from engine.pipeline import answer_query, local_engine
    from index import IndexMismatchError
    from interpret.checkpoint import write_card
    from interpret.config import GradientIndexConfig, QueryConfig
    from interpret.data import DataSpec
    from tests.conftest import synthetic_rows, write_tsv

    folder, adapted, _ = adapters("qwen2", torch.float32)
    trainable = adapted.get_nb_trainable_parameters()[0]
    spec = DataSpec(str(write_tsv(tmp_path / "train.tsv", synthetic_rows(60, seed=3))))
    write_card(folder, spec, "lora", max_length=32)  # an adapter trained elsewhere, carded
    engine = local_engine(folder)
    assert engine.identity.tracked_layers == "lora" and engine.identity.num_parameters == trainable
    manifest = build_gradient_index(engine, tmp_path / "grad", GradientIndexConfig(rank=2, damping=0.1))
    assert manifest.spec["tracked_layers"] == "lora"
    card = json.loads((folder / "card.json").read_text())
    assert card["adapter"]["r"] == 2 and card["adapter"]["base"].endswith("base")  # adapter and base named
    assert manifest.adapter == card["adapter"]
    engine = local_engine(folder, gradient_index_dir=tmp_path / "grad")
    answer = answer_query(engine, "the plot was boring and fun", config=QueryConfig(top=3))
    assert len(answer.helpful) == 3 and len(answer.harmful) == 3 and answer.method == "gradient"
    with pytest.raises(IndexMismatchError, match="tracked"):
        local_engine(folder, tracked_layers=1, gradient_index_dir=tmp_path / "grad")


@pytest.mark.parametrize(
    ("family", "patterns", "expected"),
    [
        ("bert", "*.layer.1.attention.*,classifier", ("encoder.layer.1.attention.", "classifier.")),
        ("gpt2", "*.h.1.mlp.c_fc,score", ("h.1.mlp.c_fc.", "score.")),
        ("deberta-v2", "*.layer.0.output.dense", ("encoder.layer.0.output.dense.",)),
        (
            "bart",
            "model.encoder.layers.1.*,classification_head",
            ("encoder.layers.1.", "classification_head."),
        ),
    ],
)
def test_tracked_modules_are_chosen_by_name_and_their_gradients_are_autograds(
    family, patterns, expected, rows
):
    """``modules:PATTERN,...`` tracks exactly the parameters of the modules named (fnmatch), and the
    loss gradient over them is the HF model's own autograd gradient (two formulas, no solve: 1e-10)."""
    import torch.nn.functional as F

    tracked = _tracked(family, f"modules:{patterns}")
    assert tracked.generic and tracked.parameter_names
    assert all(any(part in name for part in expected) for name in tracked.parameter_names)
    assert {p for p in expected if any(p in n for n in tracked.parameter_names)} == set(expected)
    theta, train = tracked.parameters(), ExampleStates(tracked, rows)
    states, labels = train.load(range(8))
    ours = loss_gradient(tracked, theta, states, labels)
    encoded = tracked.encode(rows.texts[:8])
    named = dict(tracked.model.named_parameters())
    params = [named[n].requires_grad_(True) for n in tracked.parameter_names]
    loss = F.cross_entropy(tracked.model(**encoded).logits, torch.as_tensor(rows.labels[:8]))
    reference = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)])
    torch.testing.assert_close(ours, reference, rtol=1e-10, atol=1e-13)
    with pytest.raises(ValueError, match="match no parameter"):
        _tracked(family, "modules:*.no_such_module")


# ------------------------------------------------------------------ pooling: a padded batch is its rows


@pytest.mark.parametrize("family", FAMILIES)
def test_a_padded_batch_of_embeddings_pools_each_rows_last_real_token(family):
    """Saliency and attacks run the model on embeddings (``inputs_embeds``), where HF decoder classifiers
    cannot see the pad ids and pool the last column, and BART refuses them. Padded, each row's logits and
    embedding gradient must be the row's own, alone, and alone its loss is the HF forward's on its ids:
    the model's pooling for its real last token, on every family."""
    from interpret.attacks.base import loss_gradients
    from interpret.classifier import TextClassifier

    model, tokenizer = family_classifier(family)
    classifier = TextClassifier(model, tokenizer)
    texts = ["the plot was good and fun", "boring"]
    rows = [
        {
            k: v[0]
            for k, v in tokenizer(text, return_tensors="pt").items()
            if k in ("input_ids", "token_type_ids")
        }
        for text in texts
    ]
    losses, gradients, _ = loss_gradients(classifier, rows, [1, 0])
    for i, row in enumerate(rows):
        alone_loss, alone_gradient, _ = loss_gradients(classifier, [row], [[1, 0][i]])
        length = len(row["input_ids"])
        torch.testing.assert_close(losses[i : i + 1], alone_loss, rtol=1e-9, atol=1e-12)
        with torch.no_grad():
            logits = model(**{k: v[None] for k, v in row.items() if k == "input_ids"}).logits
        expected = torch.nn.functional.cross_entropy(logits, torch.tensor([[1, 0][i]]))
        torch.testing.assert_close(alone_loss, expected[None], rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(gradients[i, :length], alone_gradient[0], rtol=1e-7, atol=1e-12)
        assert float(gradients[i, length:].abs().sum()) < 1e-12  # pads do not reach the loss


@pytest.mark.parametrize("family", FAMILIES)
def test_what_train_saves_from_pretrained_loads(family, rows, tmp_path):
    """``influence train``'s folder loads back with the same weights on every family, BART included
    (transformers leaves a two-label id2label out of config.json, and BART's default is three labels)."""
    from interpret.models import load_classifier, model_fingerprint
    from interpret.training import TrainConfig, save_classifier, train_classifier

    model, tokenizer = family_classifier(family, dtype=torch.float32)
    base = tmp_path / "base"
    model.save_pretrained(base)
    tokenizer.save_pretrained(base)
    config = TrainConfig(epochs=1, batch_size=8, learning_rate=1e-3)
    tracked, report = train_classifier(str(base), rows, 1, config, max_length=32, progress=False)
    card = save_classifier(tmp_path / "trained", tracked, str(base), rows, config, report)
    loaded, _ = load_classifier(str(tmp_path / "trained"))
    assert model_fingerprint(loaded) == card["model_fingerprint"]


def test_a_head_wider_or_narrower_than_the_config_says_is_one_line_naming_the_fix(tmp_path):
    from interpret.models import UnsupportedModelError, load_classifier

    model, tokenizer = family_classifier("bart", dtype=torch.float32)
    model.save_pretrained(tmp_path)  # plain save_pretrained: a two-label id2label is left out
    tokenizer.save_pretrained(tmp_path)
    with pytest.raises(UnsupportedModelError, match='add "id2label" with one name per label'):
        load_classifier(str(tmp_path))
