"""The student's small-vocabulary WordPiece tokenizer, trained on the train split only and cached.

The result is a plain Hugging Face tokenizer folder: ``transformers.AutoTokenizer.from_pretrained(dir)``
loads it, so a bundle later needs nothing from speedtrain to tokenize.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

import datasets
import numpy as np
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from speedtrain.errors import UserError

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def train_wordpiece(
    texts: Iterable[str], vocab_size: int = 5000, min_frequency: int = 1, lowercase: bool = True, max_length: int = 32
) -> PreTrainedTokenizerFast:
    """Train a BERT-style WordPiece tokenizer (``[CLS] text [SEP]``) on ``texts``.

    Args:
        texts: training texts (the train split only: val/test must not leak into the vocabulary).
        vocab_size: upper bound on the vocabulary, special tokens included; small corpora give fewer.
        min_frequency: a merge must occur this often to enter the vocabulary.
        lowercase: lowercase and strip accents before splitting.
        max_length: the tokenizer's ``model_max_length`` (the student's input length).
    """
    if vocab_size < len(SPECIAL_TOKENS) + 1:
        raise UserError(f"tokenizer.vocab_size={vocab_size} is too small; use at least a few hundred, e.g. 5000")
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase, strip_accents=lowercase, clean_text=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIAL_TOKENS, show_progress=False
    )
    tok.train_from_iterator(texts, trainer=trainer)
    # The trainer numbers the pieces in an order that changes from process to process (hash-map order): the same
    # texts would give another embedding row to each piece, hence another model. Renumber them canonically.
    learned = sorted(t for t in tok.get_vocab() if t not in SPECIAL_TOKENS)
    tok.model = models.WordPiece(vocab={t: i for i, t in enumerate(SPECIAL_TOKENS + learned)}, unk_token="[UNK]",
                                 max_input_chars_per_word=100)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=max_length,
        model_input_names=["input_ids", "attention_mask"],
    )


def vocabulary_texts(train: datasets.Dataset, sample: int | None, seed: int) -> list[str]:
    """The training texts the vocabulary is learned from: all of them, or a seeded sample of ``sample`` texts
    (``tokenizer.train_sample``) when there are more; in their order in ``train``."""
    if sample is not None and (isinstance(sample, bool) or not isinstance(sample, int) or sample <= 0):
        raise UserError(f"tokenizer.train_sample={sample!r} must be a positive number of texts (e.g. 200000) or "
                        "null (learn the vocabulary from every training text)")
    if sample is None or len(train) <= sample:
        return train["text"]
    rows = np.sort(np.random.default_rng(seed).choice(len(train), size=sample, replace=False))
    return train.select(rows)["text"]


def cached_wordpiece(texts: list[str], cache_dir: str | os.PathLike, **kwargs) -> tuple[PreTrainedTokenizerFast, Path]:
    """:func:`train_wordpiece` once per (texts, settings); later calls load the cached folder.

    Returns:
        The tokenizer and the folder it is saved in (``cache_dir/tokenizers/<hash>``).
    """
    digest = hashlib.sha256(json.dumps(kwargs, sort_keys=True).encode())
    for t in texts:
        digest.update(t.encode())
        digest.update(b"\0")
    folder = Path(cache_dir) / "tokenizers" / digest.hexdigest()[:16]
    if not (folder / "tokenizer.json").is_file():
        tokenizer = train_wordpiece(texts, **kwargs)
        save_atomically(tokenizer.save_pretrained, folder)
    return AutoTokenizer.from_pretrained(folder), folder


def save_atomically(save, folder: Path) -> None:
    """Call ``save(tmp_dir)`` and move the result to ``folder``; concurrent writers (DDP ranks) are fine."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.")
    try:
        save(tmp)
        os.replace(tmp, folder)
    except OSError:
        if not folder.exists():  # another process may have won the race: then its copy is as good
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
