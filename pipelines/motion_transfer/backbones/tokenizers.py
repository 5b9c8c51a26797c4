"""Tokenizers built in code for the models built in code: CLIP's byte-level BPE over a small vocabulary
(``tiny-random``, the ``*-arch`` models' placeholders) and a word-level one (the shapes model's)."""

from __future__ import annotations

from transformers import CLIPTokenizer


def _byte_level_alphabet() -> list[str]:
    """GPT-2/CLIP's reversible map of the 256 bytes to printable characters."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return [chr(code) for code in codes]


def build_tiny_tokenizer(max_length: int = 77) -> CLIPTokenizer:
    """A CLIP tokenizer over single bytes (no merges): every text tokenizes, nothing is downloaded."""
    alphabet = _byte_level_alphabet()
    vocab = {char: i for i, char in enumerate(alphabet)}
    vocab.update({char + "</w>": len(alphabet) + i for i, char in enumerate(alphabet)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length)


def _bpe_pieces(word: str, merges: list[tuple[str, str]]) -> list[str]:
    """The pieces that CLIP's byte-pair encoding leaves of ``word`` with these ranked ``merges``."""
    ranks = {pair: rank for rank, pair in enumerate(merges)}
    pieces = list(word[:-1]) + [word[-1] + "</w>"]
    while len(pieces) > 1:
        pairs = [(ranks.get(pair, len(ranks)), i) for i, pair in enumerate(zip(pieces, pieces[1:]))]
        rank, i = min(pairs)
        if rank == len(ranks):
            break
        pieces[i : i + 2] = [pieces[i] + pieces[i + 1]]
    return pieces


def build_word_tokenizer(words: list[str], max_length: int = 77) -> CLIPTokenizer:
    """A CLIP tokenizer whose BPE merges rebuild each of ``words`` into one token.

    Any other text still tokenizes (into single bytes), but every word of a closed vocabulary — the
    shapes world's captions — becomes exactly one token, which a small text encoder learns far more
    easily than spelling.
    """
    alphabet = _byte_level_alphabet()
    vocab = {char: i for i, char in enumerate(alphabet)}
    vocab.update({char + "</w>": len(alphabet) + i for i, char in enumerate(alphabet)})
    merges: list[tuple[str, str]] = []
    for word in sorted(set(words)):
        # BPE applies the lowest-ranked merge first, so a merge added for an earlier word (``r i`` from
        # "right") can split a later one ("t ri ..."): follow the word's actual merge path and append a
        # merge wherever the path stops short of one token.
        while len(pieces := _bpe_pieces(word, merges)) > 1:
            merges.append((pieces[0], pieces[1]))
            vocab.setdefault(pieces[0] + pieces[1], len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)


__all__ = ["build_tiny_tokenizer", "build_word_tokenizer"]
