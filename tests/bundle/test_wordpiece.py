"""The word-cache shortcut gives the tokenizer's own ids, or stands aside where it would not."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

from speedtrain.bundle.runtime import TextEncoder
from speedtrain.bundle.wordpiece import WordPieceCache

HARD = [
    "", "   ", "a", "Live   HORSES, for breeding", "MiXeD Case, punct.!? 1/2-inch (x) [y] {z} #42 a_b ~`|\\^@$%&*=+<>;:'\"",
    "x" * 150, "unbelievablyunknownwordpieces " * 3, "word " * 100, "don't, won't; can't... it's 3.5% -- ok?!",
    "hello [SEP] world [cls] and [MASK]",  # special tokens' names in the text: the tokenizer's own path
    "Café crème BRÛLÉE", "tab\tseparated\nlines", "中文 text", "ctrl\x07char", "ＦＵＬＬ width", "year’s “quoted”",
]


def _tokenizer(folder, max_length=32) -> Tokenizer:
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.enable_truncation(max_length)
    tokenizer.no_padding()
    return tokenizer


@pytest.mark.parametrize("max_length", [8, 32, 512])
def test_same_ids_as_the_tokenizer(tiny_bundle, max_length):
    tokenizer = _tokenizer(tiny_bundle, max_length)
    words = WordPieceCache.for_tokenizer(tokenizer)
    assert words is not None
    texts = (tiny_bundle / "benchmark_texts.txt").read_text().splitlines()[:200] + HARD
    accepted = [t for t in texts if words.accepts(t)]
    assert len(accepted) >= 200 and "hello [SEP] world [cls] and [MASK]" not in accepted
    assert not any(words.accepts(t) for t in HARD[-6:])  # not ASCII or not printable
    for _ in range(2):  # cold, then every word cached
        assert [words.encode(t) for t in accepted] == [e.ids for e in tokenizer.encode_batch(accepted)]
    # the encoder routes the rest to the tokenizer, in order
    encoder = TextEncoder(tiny_bundle, max_length)
    assert encoder._words is not None
    assert encoder.encode(texts) == [e.ids for e in tokenizer.encode_batch(texts)]


def test_the_cache_is_bounded_and_starts_from_whole_words(tiny_bundle):
    tokenizer = _tokenizer(tiny_bundle)
    words = WordPieceCache.for_tokenizer(tokenizer, max_words=len(WordPieceCache.for_tokenizer(tokenizer)._seed) + 3)
    seeded = len(words._cache)
    vocab = tokenizer.get_vocab()
    assert seeded > 100 and all(words._cache[w] == [vocab[w]] for w in list(words._cache)[:50])
    texts = [f"zq{i}xv" for i in range(10)]
    assert [words.encode(t) for t in texts] == [e.ids for e in tokenizer.encode_batch(texts)]
    assert len(words._cache) <= seeded + 3


def test_stands_aside_for_tokenizers_it_does_not_reproduce(tiny_bundle):
    left = _tokenizer(tiny_bundle)
    left.enable_truncation(32, direction="left")
    assert WordPieceCache.for_tokenizer(left) is None
    whitespace = _tokenizer(tiny_bundle)
    whitespace.pre_tokenizer = pre_tokenizers.Whitespace()
    assert WordPieceCache.for_tokenizer(whitespace) is None
    bpe = Tokenizer(models.BPE(unk_token="[UNK]"))
    bpe.normalizer = normalizers.BertNormalizer()
    bpe.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    assert WordPieceCache.for_tokenizer(bpe) is None
    # no post-processor, no normalizer (cased): still reproduced
    bare = _tokenizer(tiny_bundle)
    bare.post_processor = processors.Sequence([])
    bare.normalizer = None
    words = WordPieceCache.for_tokenizer(bare)
    assert words is not None and not words.lowercase and words.prefix == [] and words.suffix == []
    texts = ["Live HORSES", "live horses, for breeding!"]
    assert [words.encode(t) for t in texts] == [e.ids for e in bare.encode_batch(texts)]
