"""The GPT-2 tokenizer, checked against HF's `tokenizers` (an independent Rust implementation)
built from the same bundled vocab.json / merges.txt."""

import json
import random
from pathlib import Path

import pytest

from tinygpt2.errors import CheckpointError, GenerationError
from tinygpt2.tokenizer import Tokenizer

VOCAB_DIR = Path(__file__).resolve().parents[1] / "tinygpt2" / "assets" / "gpt2-vocab"

hf_tokenizers = pytest.importorskip("tokenizers")


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.gpt2()


@pytest.fixture(scope="module")
def ref():
    """GPT-2's tokenizer as HF builds it: byte-level pre-tokenizer, no prefix space."""
    from tokenizers import decoders, models, pre_tokenizers

    t = hf_tokenizers.Tokenizer(models.BPE.from_file(str(VOCAB_DIR / "vocab.json"), str(VOCAB_DIR / "merges.txt")))
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    return t


def _mixed_text(n=2000, seed=0):
    """A long random-ish string drawing from every kind of character below."""
    pieces = ["the", " The", "I'm", "don't", "'ll", " 2024", "3.14159", "  ", "\n", "\t", "\r\n", "!!", "?!", "...",
              "café", "naïve", "日本語", "中文", "привет", "Ελληνικά", "עברית", "🙂", "👍🏽", "👨‍👩‍👧", "🏳️‍🌈",
              "\u00a0", "\u200b", "\x00", "\x7f", "😀😀", "~", "__init__", "<|", "|>", "#", "$", "@user"]
    rng = random.Random(seed)
    return "".join(rng.choice(pieces) + rng.choice(["", " ", ""]) for _ in range(n))


CASES = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    # contractions: GPT-2's regex only knows lowercase ASCII 's 't 're 've 'm 'll 'd
    "I'm sure they'll say we've done what you'd've done, don't you think? It's OK. I'M SHOUTING",
    # spaces: a run of spaces keeps its last space for the next word
    " leading", "trailing ", "   many   spaces   ", " ", "  ", "\n", "a\n\nb", "line1\nline2\r\n", "tab\tseparated\t\tvalues",
    " \t \n  \n\n\n  end",
    "1234567890 3.14 1,000,000 007",
    "Hello, world! (yes) [no] {maybe}; a-b_c/d\\e 'quoted' \"double\" ... ?!?! #hashtag @user $5 100%",
    "café naïve résumé Ångström",
    "日本語のテキスト 中文文本 한국어",
    "Привет, мир! Ελληνικά עברית العربية",
    "emoji 🙂 👍🏽 🇫🇷 family 👨‍👩‍👧‍👦 and rainbow flag 🏳️‍🌈",
    "\u00a0nbsp\u200bzero-width\x00nul",
    "def f(x):\n    return x ** 2  # square\n",
    _mixed_text(),
]


@pytest.mark.parametrize("text", CASES, ids=lambda s: repr(s[:20]))
def test_encode_matches_reference(tok, ref, text):
    assert tok.encode(text) == ref.encode(text).ids


@pytest.mark.parametrize("text", CASES + [""], ids=lambda s: repr(s[:20]))
def test_round_trip(tok, ref, text):
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert tok.decode_bytes(ids) == text.encode("utf-8")
    assert ref.decode(ids) == text


def test_known_ids(tok):
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.eos_id == 50256
    assert tok.vocab_size == 50257
    assert tok.encode("") == []
    assert tok.decode([]) == ""


def test_endoftext_is_one_token(tok):
    # The literal text "<|endoftext|>" is GPT-2's document separator, not 7 ordinary tokens.
    eos = tok.eos_id
    assert tok.encode("<|endoftext|>") == [eos]
    assert tok.encode("Hello<|endoftext|>world") == tok.encode("Hello") + [eos] + tok.encode("world")
    assert tok.encode("a <|endoftext|> b") == [64, 220, eos, 275]
    assert tok.encode("<|endoftext|><|endoftext|>") == [eos, eos]
    assert tok.decode(tok.encode("one<|endoftext|>two")) == "one<|endoftext|>two"


def test_endoftext_matches_transformers(tok):
    # transformers' GPT-2 tokenizer treats <|endoftext|> as a special token inside text too.
    transformers = pytest.importorskip("transformers")
    hf = transformers.GPT2TokenizerFast.from_pretrained(str(VOCAB_DIR))
    for text in ["Hello<|endoftext|>world", "x <|endoftext|> y", " <|endoftext|>\n", "a<|endoftext|><|endoftext|>b"]:
        assert tok.encode(text) == hf.encode(text)


def test_an_id_past_the_vocabulary_is_a_typed_error(tok):
    with pytest.raises(GenerationError, match="999999 is not in the vocabulary"):
        tok.decode([999999])


def test_decode_bytes_can_cut_a_character(tok):
    # "日" is 3 UTF-8 bytes that GPT-2 splits over 2 tokens, so a stream may stop mid-character.
    ids = tok.encode("日")
    assert [tok.decode_bytes([i]) for i in ids] == [b"\xe6\x97", b"\xa5"]
    assert tok.decode(ids[:1]) == "\ufffd"  # decode() replaces the incomplete character
    assert tok.decode(ids) == "日"


def test_from_dir_tokenizer_json_equals_vocab_merges(tok, ref, tmp_path):
    ref.save(str(tmp_path / "tokenizer.json"))
    from_json = Tokenizer.from_dir(tmp_path)
    text = CASES[-1] + "<|endoftext|>" + CASES[2]
    assert from_json.encode(text) == tok.encode(text)
    assert (from_json.eos_id, from_json.vocab_size) == (tok.eos_id, tok.vocab_size)

    # Older tokenizer.json files store merges as "a b" strings rather than [a, b] pairs.
    data = json.loads((tmp_path / "tokenizer.json").read_text(encoding="utf-8"))
    data["model"]["merges"] = [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
    (tmp_path / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    assert Tokenizer.from_dir(tmp_path).encode(text) == tok.encode(text)


def test_from_dir_missing_or_corrupt(tmp_path):
    with pytest.raises(CheckpointError, match=str(tmp_path)):
        Tokenizer.from_dir(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="tokenizer.json"):
        Tokenizer.from_dir(tmp_path)
    (tmp_path / "vocab.json").write_text('{"a": 0, "<|endoftext|>": 1}')
    (tmp_path / "merges.txt").write_text("#version: 0.2\na b c\n")
    with pytest.raises(CheckpointError, match="merges.txt"):
        Tokenizer.from_dir(tmp_path)
