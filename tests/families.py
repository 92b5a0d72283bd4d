"""Tiny random-weight classifiers of many transformers families, built from their config classes (no
downloads), and for each the kind of tokenizer its family ships, trained here on the tests' words:

* WordPiece (``##`` marks a continuation): BERT, DistilBERT, ELECTRA, MPNet;
* byte-level BPE (``Ġ`` marks a word start): RoBERTa, GPT-2, Qwen2, ModernBERT, BART, OPT;
* SentencePiece-style Unigram (``▁`` marks a word start): DeBERTa-v2, ALBERT, XLM-R, Llama.

Every tokenizer numbers ``[PAD]`` 0, ``[UNK]`` 1, ``[CLS]`` 2, ``[SEP]`` 3, ``[MASK]`` 4; encoders wrap a
text in ``[CLS] ... [SEP]``, decoders append ``[SEP]`` as their end-of-text."""

from __future__ import annotations

import functools

import torch
import transformers as hf
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from tests.conftest import NEGATIVE, NEUTRAL, POSITIVE

VOCAB = 40
"""The WordPiece vocabulary's size (the other kinds are wider: see :func:`family_tokenizer`)."""
WIDTH = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)
IDS = dict(pad_token_id=0, bos_token_id=2, eos_token_id=3)
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

TOKENIZER_KINDS = {
    "wordpiece": ("bert", "distilbert", "electra", "mpnet"),
    "bytelevel": ("roberta", "gpt2", "qwen2", "modernbert", "bart", "opt"),
    "metaspace": ("deberta-v2", "albert", "xlm-roberta", "llama"),
}
DECODERS = ("gpt2", "qwen2", "llama", "opt")
SEGMENTED = dict.fromkeys(("bert", "electra", "albert", "deberta-v2"), ("token_type_ids",))
"""Families whose own tokenizer returns segment ids (its ``model_input_names``); the others' do not."""


def _configs(num_labels: int, vocab_size: int) -> dict[str, object]:
    common = dict(vocab_size=vocab_size, num_labels=num_labels, max_position_embeddings=64)
    return {
        "bert": hf.BertConfig(**WIDTH, **common),
        "roberta": hf.RobertaConfig(**WIDTH, **common, pad_token_id=0),
        "xlm-roberta": hf.XLMRobertaConfig(**WIDTH, **common, pad_token_id=0),
        "distilbert": hf.DistilBertConfig(dim=16, n_layers=2, n_heads=2, hidden_dim=32, **common),
        "deberta-v2": hf.DebertaV2Config(
            **WIDTH,
            **common,
            relative_attention=True,
            pos_att_type=["p2c", "c2p"],
            position_buckets=8,
            max_relative_positions=16,
            pooler_hidden_size=16,
        ),
        "electra": hf.ElectraConfig(embedding_size=16, **WIDTH, **common),
        "albert": hf.AlbertConfig(embedding_size=8, **WIDTH, **common),
        "mpnet": hf.MPNetConfig(**WIDTH, **common, pad_token_id=0),
        "modernbert": hf.ModernBertConfig(
            **WIDTH,
            **common,
            **IDS,
            cls_token_id=2,
            sep_token_id=3,
            global_attn_every_n_layers=2,
            local_attention=8,
        ),
        "gpt2": hf.GPT2Config(
            n_embd=16,
            n_layer=2,
            n_head=2,
            n_positions=64,
            vocab_size=vocab_size,
            num_labels=num_labels,
            **IDS,
        ),
        "llama": hf.LlamaConfig(**WIDTH, **common, **IDS, num_key_value_heads=1),
        "qwen2": hf.Qwen2Config(**WIDTH, **common, **IDS, num_key_value_heads=1),
        # Encoder-decoder: the decoder stack is tracked, saliency goes in through the shared embedding.
        "bart": hf.BartConfig(
            d_model=16,
            encoder_layers=2,
            decoder_layers=2,
            encoder_attention_heads=2,
            decoder_attention_heads=2,
            encoder_ffn_dim=32,
            decoder_ffn_dim=32,
            **common,
            **IDS,
        ),
        "opt": hf.OPTConfig(
            hidden_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            ffn_dim=32,
            word_embed_proj_dim=16,
            **common,
            **IDS,
        ),
    }


FAMILIES = list(_configs(2, VOCAB))


def tiny_classifier(
    family: str,
    num_labels: int = 2,
    dtype: torch.dtype = torch.float64,
    seed: int = 0,
    vocab_size: int = VOCAB,
):
    """A seeded random-weight ``AutoModelForSequenceClassification`` of ``family``, in eval mode.

    PyTorch's SDPA attention where the family has it: several families' eager attention takes its softmax
    in float32 whatever the model's dtype (Qwen2, Llama, ModernBERT), which caps a float64 test at float32
    rounding, and turns a float64 mask's ``finfo.min`` into ``-inf`` (NaN on rows a sliding window fully
    masks). SDPA computes in the model's dtype."""
    torch.manual_seed(seed)
    config = _configs(num_labels, vocab_size)[family]
    try:
        model = hf.AutoModelForSequenceClassification.from_config(config, attn_implementation="sdpa")
    except ValueError:  # no SDPA kernel for this family (DeBERTa): its eager attention is in the model dtype
        model = hf.AutoModelForSequenceClassification.from_config(config, attn_implementation="eager")
    return model.to(dtype).eval()


def tokenizer_kind(family: str) -> str:
    return next(kind for kind, families in TOKENIZER_KINDS.items() if family in families)


@functools.cache
def _backend(kind: str, decoder: bool) -> Tokenizer:
    words = [*POSITIVE, *NEGATIVE, *NEUTRAL]
    corpus = [" ".join(words[i:] + words[:i]) for i in range(len(words))]
    if kind == "wordpiece":
        tokenizer = Tokenizer(
            models.WordPiece({w: i for i, w in enumerate(SPECIAL + words)}, unk_token="[UNK]")
        )
        tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tokenizer.decoder = decoders.WordPiece()
    elif kind == "bytelevel":  # few merges: several words stay split into pieces
        tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=320, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        )
        tokenizer.train_from_iterator(corpus, trainer)
    else:
        tokenizer = Tokenizer(models.Unigram())
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
        tokenizer.decoder = decoders.Metaspace()
        trainer = trainers.UnigramTrainer(vocab_size=60, special_tokens=SPECIAL, unk_token="[UNK]")
        tokenizer.train_from_iterator(corpus, trainer)
    if decoder:
        tokenizer.post_processor = processors.TemplateProcessing(
            single="$A [SEP]", pair="$A [SEP] $B:1 [SEP]:1", special_tokens=[("[SEP]", 3)]
        )
    else:
        tokenizer.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", 2), ("[SEP]", 3)],
        )
    return tokenizer


def family_tokenizer(family: str) -> hf.PreTrainedTokenizerFast:
    """The tokenizer kind ``family`` ships (module docstring), ``len()`` of it is the model's vocabulary."""
    backend = _backend(tokenizer_kind(family), family in DECODERS)
    tokens = dict(
        zip(("pad_token", "unk_token", "cls_token", "sep_token", "mask_token"), SPECIAL, strict=True)
    )
    tokens |= {"bos_token": "[CLS]", "eos_token": "[SEP]"}
    return hf.PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(backend.to_str()),
        model_input_names=["input_ids", *SEGMENTED.get(family, ()), "attention_mask"],
        **tokens,
    )


def family_classifier(family: str, num_labels: int = 2, dtype: torch.dtype = torch.float64, seed: int = 0):
    """``(model, tokenizer)`` of ``family`` with its own kind of tokenizer."""
    tokenizer = family_tokenizer(family)
    return tiny_classifier(family, num_labels, dtype, seed, vocab_size=len(tokenizer)), tokenizer
