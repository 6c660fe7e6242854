"""Tokenizer folders built from a text corpus, without any download: a CLIP BPE tokenizer and a T5 tokenizer.

`write_clip_tokenizer` writes a byte-level BPE folder laid out like openai/clip-vit-large-patch14's (256 byte
symbols, the same 256 with "</w>", merges learnt on the corpus, then <|startoftext|> and <|endoftext|> as the
last two ids): vocab.json + merges.txt (what the slow `CLIPTokenizer` reads) and the tokenizer.json +
tokenizer_config.json that transformers' `save_pretrained` adds. Without a merge budget, BPE runs until every
corpus word is one token.

`write_t5_tokenizer` writes a `T5TokenizerFast` folder (T5's layout: <pad> 0, </s> 1, <unk> 2) whose Unigram
vocabulary is every corpus word as one piece ("▁word") plus its single characters as a fallback: corpus words
always come out as one token, any other word made of those characters as characters.
"""

from __future__ import annotations

import collections
import json
import math
import re
from collections.abc import Iterable
from pathlib import Path

CLIP_SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>")
T5_SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")
T5_WORD_BOUNDARY = "▁"  # SentencePiece's metaspace, which the T5 pre-tokenizer puts before every word
# A character piece scores this far below the least likely word, so Viterbi never splits a known word.
T5_CHARACTER_PENALTY = 10.0
# CLIP's pre-tokenizer pattern in Python's `re`: runs of letters, single digits, runs of other symbols.
_CLIP_WORD = re.compile(r"[^\W\d_]+|\d|[^\s\w]+|_+")


def clip_words(corpus: Iterable[str]) -> list[str]:
    """The corpus split as CLIP's tokenizer splits text before BPE (lower case, letters apart from symbols)."""
    return [w for line in corpus for w in _CLIP_WORD.findall(line.lower())]


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character map (the ByteLevel pre-tokenizer's alphabet)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    chars, extra = list(keep), 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(keep, (chr(c) for c in chars), strict=True))


def learn_merges(words: list[str], num_merges: int | None = None) -> list[tuple[str, str]]:
    """Plain BPE over words whose last symbol carries "</w>"; ties broken by the pair itself (deterministic).

    `num_merges` None: merge until every word is a single symbol."""
    byte_map = _bytes_to_unicode()
    counts = collections.Counter("".join(byte_map[b] for b in w.encode("utf-8")) for w in words)
    split = {w: [*w[:-1], w[-1] + "</w>"] for w in counts}
    merges = []
    while num_merges is None or len(merges) < num_merges:
        pairs = collections.Counter()
        for w, symbols in split.items():
            for pair in zip(symbols, symbols[1:], strict=False):
                pairs[pair] += counts[w]
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        for w, symbols in split.items():
            out, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    out.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            split[w] = out
    return merges


def write_clip_tokenizer(
    folder: str | Path,
    corpus: Iterable[str],
    num_merges: int | None = None,
    pad_token: str = "<|endoftext|>",
    max_length: int = 77,
) -> int:
    """A CLIPTokenizer folder whose BPE merges are learnt on `corpus`; returns the vocabulary size.

    `pad_token` "!" gives SD3's tokenizer_2 (OpenCLIP bigG pads with "!", id 0). `max_length` is the
    tokenizer's model_max_length (77 in SD3), to which pipelines pad and truncate."""
    from transformers import CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    alphabet = list(_bytes_to_unicode().values())
    merges = learn_merges(clip_words(corpus), num_merges)
    vocab_list = alphabet + [c + "</w>" for c in alphabet] + ["".join(m) for m in merges] + list(CLIP_SPECIAL_TOKENS)
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(vocab_list))}
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merges_txt = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges)
    (folder / "merges.txt").write_text(merges_txt, encoding="utf-8")
    tok = CLIPTokenizer(
        vocab=str(folder / "vocab.json"),
        merges=str(folder / "merges.txt"),
        pad_token=pad_token,
        model_max_length=max_length,
    )
    tok.save_pretrained(folder)
    return len(vocab)


def t5_pieces(corpus: Iterable[str]) -> list[tuple[str, float]]:
    """The Unigram vocabulary: T5's special tokens, every whitespace-separated corpus word as "▁word" scored by
    its log frequency, then "▁" and the words' characters, each well below every word."""
    counts = collections.Counter(w for line in corpus for w in line.split())
    if not counts:
        raise ValueError("the corpus holds no words")
    total = sum(counts.values())
    words = sorted(counts, key=lambda w: (-counts[w], w))
    scores = [math.log(counts[w] / total) for w in words]
    char_score = min(scores) - T5_CHARACTER_PENALTY
    chars = sorted({c for w in words for c in w})
    return (
        [(t, 0.0) for t in T5_SPECIAL_TOKENS]
        + [(T5_WORD_BOUNDARY + w, s) for w, s in zip(words, scores, strict=True)]
        + [(c, char_score) for c in [T5_WORD_BOUNDARY, *chars]]
    )


def write_t5_tokenizer(folder: str | Path, corpus: Iterable[str], max_length: int = 512) -> int:
    """A T5TokenizerFast folder (tokenizer.json + tokenizer_config.json) whose words are `corpus`'s; returns the
    vocabulary size (for the model's embedding table, which may be larger)."""
    from transformers import T5TokenizerFast

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # extra_ids=0 leaves out the 100 sentinel tokens SD3 never uses.
    tok = T5TokenizerFast(vocab=t5_pieces(corpus), extra_ids=0, model_max_length=max_length)
    tok.save_pretrained(folder)
    return len(tok)
