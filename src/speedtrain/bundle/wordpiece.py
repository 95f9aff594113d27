"""Token ids of plain texts for a BERT-style WordPiece tokenizer, one dictionary lookup per word.

Every text through ``tokenizers`` pays for an ``Encoding`` (offsets, type ids, masks, words) and the
normalizer, pre-tokenizer and post-processor passes: ~25 us for a 115-character review on 2 cores here, more than
a static student's forward. Text is made of words that repeat (Zipf): for printable ASCII text the BERT
normalizer is ``str.lower`` and the BERT pre-tokenizer is "runs of letters and digits, or one other character", so
a word's pieces can be computed once, by the tokenizer's own WordPiece model, and looked up after that. Same ids as
the tokenizer (tested); any other text (accents, other scripts, control characters, a special token's name) goes
to the tokenizer itself. ``scripts/bench_tokenize.py`` measures both.
"""

from __future__ import annotations

import re

# printable ASCII after BertNormalizer: a word is a run of letters and digits, every other non-space character is
# a word of its own (BertPreTokenizer splits at whitespace and at ASCII punctuation, which is every such character)
_WORDS = re.compile(r"[A-Za-z0-9]+|[^ A-Za-z0-9]")


class WordPieceCache:
    """``encode(text) -> ids`` for printable ASCII texts, as ``tokenizer.encode(text).ids`` (truncation included).

    Build it with :meth:`for_tokenizer`, which returns None for a tokenizer this shortcut does not reproduce
    (another model, pre-tokenizer or normalizer, left truncation). Words are cached up to ``max_words`` (then the
    cache starts again); whole-word vocabulary entries are in it from the start.
    """

    def __init__(self, model, vocab: dict[str, int], prefix: list[int], suffix: list[int], room: int | None,
                 lowercase: bool, special: re.Pattern | None, max_words: int = 1 << 20):
        self.model, self.prefix, self.suffix, self.room = model, prefix, suffix, room
        self.lowercase, self.special, self.max_words = lowercase, special, max_words
        # WordPiece takes the longest vocabulary entry that starts a word: a word in the vocabulary is one piece
        self._seed = {word: [i] for word, i in vocab.items() if _WORDS.fullmatch(word)
                      and (not lowercase or word == word.lower())}
        self._cache = dict(self._seed)

    @classmethod
    def for_tokenizer(cls, tokenizer, max_words: int = 1 << 20) -> WordPieceCache | None:
        """The cache for a ``tokenizers.Tokenizer``, or None where it would not give the tokenizer's ids."""
        from tokenizers import models, normalizers, pre_tokenizers

        normalizer = tokenizer.normalizer
        if not isinstance(tokenizer.model, models.WordPiece) or \
                not isinstance(tokenizer.pre_tokenizer, pre_tokenizers.BertPreTokenizer) or \
                not (normalizer is None or isinstance(normalizer, normalizers.BertNormalizer)):
            return None
        truncation = tokenizer.truncation
        if truncation is not None and truncation["direction"].lower() != "right":
            return None
        probe = tokenizer.encode("a").ids  # the post-processor's special tokens around one piece
        core = [t.id for t in tokenizer.model.tokenize("a")]
        at = next((i for i in range(len(probe)) if probe[i:i + len(core)] == core), None)
        if at is None:
            return None
        prefix, suffix = probe[:at], probe[at + len(core):]
        room = None if truncation is None else truncation["max_length"] - len(prefix) - len(suffix)
        if room is not None and room < 0:
            return None
        added = [t.content for t in tokenizer.get_added_tokens_decoder().values() if t.content]
        special = re.compile("|".join(map(re.escape, added)), re.IGNORECASE) if added else None
        lowercase = normalizer is not None and bool(normalizer.lowercase)
        return cls(tokenizer.model, tokenizer.get_vocab(), prefix, suffix, room, lowercase, special, max_words)

    def accepts(self, text: str) -> bool:
        """Whether :meth:`encode` gives the tokenizer's ids for ``text``: printable ASCII, no added token in it."""
        return text.isascii() and text.isprintable() and (self.special is None or self.special.search(text) is None)

    def encode(self, text: str) -> list[int]:
        """The tokenizer's ids of an accepted text (see :meth:`accepts`)."""
        cache, ids = self._cache, list(self.prefix)
        for word in _WORDS.findall(text.lower() if self.lowercase else text):
            pieces = cache.get(word)
            if pieces is None:
                pieces = self._pieces(word)
            ids += pieces
        if self.room is not None and len(ids) > len(self.prefix) + self.room:
            del ids[len(self.prefix) + self.room:]
        ids += self.suffix
        return ids

    def _pieces(self, word: str) -> list[int]:
        if len(self._cache) >= self.max_words:  # bounded memory in a long-running server
            self._cache = dict(self._seed)
        pieces = self._cache[word] = [t.id for t in self.model.tokenize(word)]
        return pieces
