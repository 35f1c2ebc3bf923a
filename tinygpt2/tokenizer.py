"""GPT-2's byte-level BPE tokenizer, in pure Python.

Byte-level BPE in a few lines:

1. The text is cut into "words" by a regex (GPT-2's pre-tokenizer): contractions,
   runs of letters, of digits, of punctuation, and of whitespace, each usually
   carrying one leading space (" world"). Merges never cross a word boundary.
2. Each word becomes its UTF-8 bytes. Every byte is shown as a printable unicode
   character (`bytes_to_unicode`), so the vocabulary is made of plain strings
   and a space shows up as "Ġ". The 256 byte-characters are the base tokens, so
   any text at all can be encoded: there is no "unknown" token.
3. BPE: repeatedly merge the adjacent pair of symbols whose merge was learned
   earliest (lowest rank in merges.txt), until no learned pair is left. The
   symbols that remain are looked up in vocab.json to give the ids.

Decoding is the reverse: ids -> strings -> bytes -> UTF-8 text.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import regex

from .errors import CheckpointError, GenerationError

EOS_TOKEN = "<|endoftext|>"

# GPT-2's pre-tokenizer. `\s+(?!\S)` takes a run of whitespace except its last
# character when a word follows, so that last space can lead the next word.
GPT2_SPLIT_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


@functools.lru_cache(maxsize=None)
def bytes_to_unicode() -> dict[int, str]:
    """Map each of the 256 byte values to a printable unicode character.

    Printable Latin-1 bytes map to themselves; the others (control characters,
    space, ...) are shifted to 256 + n, which is why a space becomes "Ġ" (U+0120).
    """
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


class Tokenizer:
    """GPT-2 byte-level BPE: `encode(text) -> ids`, `decode(ids) -> text`."""

    def __init__(self, vocab: dict[str, int], merges: list[tuple[str, str]], special_tokens=(EOS_TOKEN,)):
        self.encoder = vocab                               # token string -> id
        self.decoder = {i: s for s, i in vocab.items()}    # id -> token string
        self.ranks = {pair: r for r, pair in enumerate(merges)}  # lower rank = merged earlier
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        self.pattern = regex.compile(GPT2_SPLIT_PATTERN)
        if EOS_TOKEN not in vocab:
            raise CheckpointError(f"tokenizer vocabulary has no {EOS_TOKEN!r} token")
        self.eos_id = vocab[EOS_TOKEN]
        self.vocab_size = len(vocab)
        # Special tokens are matched literally in the text before the regex runs
        # (as HF does), so "<|endoftext|>" becomes one id instead of 7 tokens.
        self.special = {s: vocab[s] for s in special_tokens if s in vocab}
        self.special_pattern = regex.compile("(" + "|".join(regex.escape(s) for s in self.special) + ")")
        # Per-instance cache: the same words ("Ġthe", ",", ...) come back all the time.
        self._bpe = functools.lru_cache(maxsize=1 << 16)(self._bpe_uncached)

    # ---- loading -------------------------------------------------------------------

    @classmethod
    def gpt2(cls) -> "Tokenizer":
        """The GPT-2 vocabulary bundled with the package."""
        return cls.from_dir(Path(__file__).parent / "assets" / "gpt2-vocab")

    @classmethod
    def from_dir(cls, path) -> "Tokenizer":
        """Load vocab.json + merges.txt from `path`, or else an HF tokenizer.json."""
        path = Path(path)
        vocab_file, merges_file, tok_file = path / "vocab.json", path / "merges.txt", path / "tokenizer.json"
        if vocab_file.is_file() and merges_file.is_file():
            vocab = _read_vocab(_read_json(vocab_file), vocab_file)
            merges = _parse_merges(_read_merges_txt(merges_file), merges_file)
            return cls(vocab, merges)
        if tok_file.is_file():
            data = _read_json(tok_file)
            model = data.get("model") if isinstance(data, dict) else None
            if not isinstance(model, dict) or "vocab" not in model or "merges" not in model:
                raise CheckpointError(f"{tok_file}: no BPE model (model.vocab / model.merges)")
            vocab = _read_vocab(model["vocab"], tok_file)
            for tok in data.get("added_tokens") or []:  # special tokens may live only here
                if isinstance(tok, dict) and isinstance(tok.get("content"), str) and isinstance(tok.get("id"), int):
                    vocab.setdefault(tok["content"], tok["id"])
            return cls(vocab, _parse_merges(model["merges"], tok_file))
        raise CheckpointError(f"no tokenizer in {path}: expected vocab.json + merges.txt, or tokenizer.json")

    # ---- encoding ------------------------------------------------------------------

    def _bpe_uncached(self, word: str) -> tuple[str, ...]:
        """Apply the merges to one pre-tokenized word (already in byte-characters)."""
        symbols = list(word)
        while len(symbols) > 1:
            # The learned pair with the lowest rank is merged first, everywhere in the word.
            pairs = set(zip(symbols, symbols[1:]))
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            first, second = best
            merged, i = [], 0
            while i < len(symbols):
                if i < len(symbols) - 1 and symbols[i] == first and symbols[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        return tuple(symbols)

    def _encode_ordinary(self, text: str) -> list[int]:
        ids = []
        for word in self.pattern.findall(text):
            word = "".join(self.byte_encoder[b] for b in word.encode("utf-8"))
            ids.extend(self.encoder[tok] for tok in self._bpe(word))
        return ids

    def encode(self, text: str) -> list[int]:
        """Text -> token ids, identical to GPT-2's encoding ("<|endoftext|>" -> eos_id)."""
        ids = []
        # With a capturing group, split() alternates: text, special, text, special, ...
        for k, part in enumerate(self.special_pattern.split(text) if self.special else [text]):
            if k % 2:
                ids.append(self.special[part])
            elif part:
                ids.extend(self._encode_ordinary(part))
        return ids

    # ---- decoding ------------------------------------------------------------------

    def decode_bytes(self, ids) -> bytes:
        """Token ids -> raw bytes. A UTF-8 character may be cut between two tokens."""
        out = bytearray()
        for i in ids:
            tok = self.decoder.get(int(i))
            if tok is None:
                raise GenerationError(f"token id {i} is not in the vocabulary (size {self.vocab_size})")
            if tok in self.special:
                out += tok.encode("utf-8")
            else:
                out += bytes(self.byte_decoder[c] for c in tok)
        return bytes(out)

    def decode(self, ids) -> str:
        """Token ids -> text; invalid UTF-8 (a cut character) becomes U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")


# ---- file parsing helpers (every failure is a CheckpointError naming the file) ----------


def _read_json(file: Path):
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{file}: cannot read tokenizer file: {e}") from e


def _read_merges_txt(file: Path) -> list[str]:
    try:
        lines = file.read_text(encoding="utf-8").split("\n")
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{file}: cannot read tokenizer file: {e}") from e
    # The first line is a "#version: 0.2" header; blank lines (the last one) are skipped.
    return [ln.rstrip("\r") for ln in lines if ln.strip() and not ln.startswith("#version")]


def _read_vocab(vocab, file: Path) -> dict[str, int]:
    if not isinstance(vocab, dict) or not all(isinstance(k, str) and isinstance(v, int) for k, v in vocab.items()):
        raise CheckpointError(f"{file}: vocabulary is not a {{token: id}} mapping")
    return dict(vocab)


def _parse_merges(merges, file: Path) -> list[tuple[str, str]]:
    """Merges come as "a b" strings (merges.txt, older tokenizer.json) or [a, b] pairs."""
    if not isinstance(merges, list):
        raise CheckpointError(f"{file}: merges are not a list")
    out = []
    for m in merges:
        pair = m.split(" ") if isinstance(m, str) else m
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(s, str) and s for s in pair)):
            raise CheckpointError(f"{file}: bad merge entry {m!r}")
        out.append((pair[0], pair[1]))
    return out
