"""The small-vocab WordPiece tokenizer: size, round trip, Hugging Face loading, caching."""

from __future__ import annotations

from transformers import AutoTokenizer

from speedtrain.data import sources
from speedtrain.data.tokenizer import cached_wordpiece, train_wordpiece

TEXTS = sources.hscodes()["train"]["text"]


def test_vocab_size_and_round_trip(tmp_path):
    tok = train_wordpiece(TEXTS, vocab_size=2000, max_length=32)
    assert len(tok) == 2000
    ids = tok("Horses; live, pure-bred breeding animals")["input_ids"]
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
    assert tok.decode(ids, skip_special_tokens=True) == "horses ; live, pure - bred breeding animals"
    assert tok.unk_token_id not in ids


def test_truncation_to_max_length():
    tok = train_wordpiece(TEXTS, vocab_size=1000, max_length=8)
    ids = tok(TEXTS[0] * 20, truncation=True)["input_ids"]
    assert len(ids) == 8 and ids[-1] == tok.sep_token_id


def test_autotokenizer_loads_saved_folder(tmp_path):
    tok, folder = cached_wordpiece(TEXTS[:2000], tmp_path, vocab_size=800, max_length=32)
    assert (folder / "tokenizer.json").is_file() and (folder / "tokenizer_config.json").is_file()
    loaded = AutoTokenizer.from_pretrained(folder)
    text = "Fish; fresh or chilled, trout"
    assert loaded(text)["input_ids"] == tok(text)["input_ids"]
    assert loaded.pad_token == "[PAD]" and loaded.model_max_length == 32
    again, folder2 = cached_wordpiece(TEXTS[:2000], tmp_path, vocab_size=800, max_length=32)
    assert folder2 == folder  # cached: same texts and settings
    _, other = cached_wordpiece(TEXTS[:2000], tmp_path, vocab_size=700, max_length=32)
    assert other != folder


def test_the_same_texts_give_the_same_piece_ids_in_every_process():
    """The trainer numbers pieces in hash-map order, which changes from process to process: the same texts and
    seed gave another vocabulary order, so another model (and the prune test's 40-96% agreement spread)."""
    import subprocess
    import sys

    script = ("import hashlib, json\n"
              "from speedtrain.data import sources\n"
              "from speedtrain.data.tokenizer import train_wordpiece\n"
              "tok = train_wordpiece(sources.hscodes()['train']['text'][:3000], vocab_size=600)\n"
              "print(hashlib.sha256(json.dumps(sorted(tok.get_vocab().items())).encode()).hexdigest())\n")
    runs = {subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
            for _ in range(2)}
    assert len(runs) == 1 and len(next(iter(runs)).strip()) == 64
    tok = train_wordpiece(TEXTS[:3000], vocab_size=600)
    assert [tok.convert_ids_to_tokens(i) for i in range(5)] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
