"""Seeded text generators for tokenizer tests and benchmarks: realistic short captions, and a
mixed-Unicode corpus aimed at every place where a CLIP tokenizer can go wrong (ftfy's fixers,
HTML entities, case folding under IGNORECASE, \\p{L}/\\p{N} edge cases, whitespace definitions,
emoji sequences, control characters, special-token strings)."""

from __future__ import annotations

import random

_COLORS = "red green blue yellow black white orange purple pink brown gray golden silver".split()
_OBJECTS = (
    "dog cat man woman child bird horse car bus train bicycle boat plane pizza cake table chair bench "
    "kite surfboard skateboard umbrella clock giraffe elephant zebra sheep cow laptop phone book vase "
    "flower tree building street beach mountain river kitchen bedroom bathroom"
).split()
_ADJECTIVES = "small large old young happy tall little big wooden empty busy crowded beautiful cute fluffy".split()
_VERBS = "sitting standing walking running riding playing eating holding looking lying flying parked".split()
_PLACES = (
    "on a table|in the snow|near the beach|on the street|in a field|next to a building|under a tree|"
    "in the kitchen|at night|on top of a hill|in front of a house|by the river"
).split("|")


def synthetic_captions(n: int, seed: int = 0) -> list[str]:
    """Short COCO-like English captions (mostly plain ASCII, some capitals, digits, apostrophes)."""
    r = random.Random(seed)
    out = []
    for _ in range(n):
        c, o, o2, a, v, p = (r.choice(x) for x in (_COLORS, _OBJECTS, _OBJECTS, _ADJECTIVES, _VERBS, _PLACES))
        out.append(r.choice((
            f"a {a} {c} {o} {v} {p}",
            f"{r.choice(['Two', 'three', 'several', 'Many'])} {o}s {v} {p}.",
            f"A photo of a {o}.",
            f"The {a} {o} is {v} {p} with a {c} {o2}",
            f"{a.capitalize()} {o}, {c} and {r.choice(_COLORS)}, {p}",
            f"a {o} that's {v} {p} in {r.randrange(1950, 2025)}",
        )))
    return out


_PIECES = [
    # ASCII words, case, digits, punctuation, contractions (upper case too: the regex is IGNORECASE)
    "Hello", "WORLD", "MiXeD", "a", "I", "x2", "2024", "3.14", "1e-9", "C++", "C#", "e-mail", "foo_bar",
    "'s", "'S", "'T", "'RE", "'Ve", "'M", "'LL", "'D", "don't", "DON'T", "it's", "rock'n'roll", "''",
    "!!!", "?!", "...", "--", "(a)", "[b]", "{c}", "<b>", "</p>", "/", "\\", "|", "@", "#tag", "$5", "%",
    # Latin beyond ASCII, case-folding oddities
    "café", "CAFÉ", "naïve", "straße", "STRASSE", "İstanbul", "ıi", "ſtar", "ﬁne", "ﬀ", "Ǆ", "ǅ", "ǆ",
    "K", "Å", "µ", "ΣΑΣ", "ὈΔΥΣΣΕΎΣ", "ς", "ΐ", "ᾼ", "ι\u0345", "e\u0301", "a\u0308\u0301", "\u0345",
    # other scripts
    "Привет", "Ёж", "مرحبا", "שָׁלוֹם", "हिन्दी", "ภาษาไทย", "日本語", "中文，标点。", "한국어", "가",
    "ｶﾀｶﾅ", "ＦＵＬＬ", "１２３", "٣٤", "४२", "Ⅻ", "ⅻ", "Ⓐ", "ⓐ", "²", "½", "𝐀𝐁", "𝟘", "〇", "々",
    # emoji and symbols
    "😀", "👍🏽", "👨\u200d👩\u200d👧", "🇯🇵", "❤️", "☕", "©", "™", "€", "→", "∑", "🏳️\u200d🌈", "#️⃣",
    # whitespace and invisible characters
    "\u200b", "\u200c", "\u200d", "\ufeff", "\u00ad", "\u2060", "\u202e", "\u180e", "\u3000", "\xa0",
    "\u2028", "\u2029", "\x85", "\x1c", "\x1f", "\x0b", "\x0c", "\r\n", "\r", "\t", "\n",
    # control characters and terminal escapes
    "\x00", "\x01", "\x07", "\x1b", "\x1b[31m", "\x1b[0m", "\x7f", "\x80", "\x93", "\x9f",
    # HTML entities, valid, double, invalid, legacy without ';'
    "&amp;", "&lt;", "&gt;", "&quot;", "&#39;", "&#x27;", "&nbsp;", "&amp;amp;", "&amp;lt;", "&copy",
    "&eacute;", "&#0;", "&#1;", "&#128512;", "&#x1F600;", "&#xD800;", "&bogus;", "AT&T", "&", "&#",
    # mojibake (UTF-8 read as Latin-1 / Windows-1252) and surrogates
    "Ã©", "Ã¨", "â€™", "â€œquoteâ€\x9d", "Ã¢â‚¬â„¢", "ÃƒÂ©", "Ã ", "\ud83d\ude00", "\ud800",
    # special-token strings
    "<start_of_text>", "<END_OF_TEXT>", "<ſtart_of_text>", "<|startoftext|>", "</w>",
]
_SEPARATORS = ["", " ", " ", " ", "  ", "\t", "\n", "-", "'", "\u3000", "\xa0", "\r\n"]
_CODEPOINT_RANGES = [(0x20, 0x7E), (0x00, 0x1F), (0x80, 0x24F), (0x300, 0x36F), (0x370, 0x3FF), (0x400, 0x4FF),
                     (0x590, 0x6FF), (0x900, 0x97F), (0xE00, 0xE7F), (0x1100, 0x11FF), (0x1E00, 0x1FFF),
                     (0x2000, 0x206F), (0x2100, 0x24FF), (0x3000, 0x30FF), (0x4E00, 0x4E80), (0xAC00, 0xAC80),
                     (0xFB00, 0xFB4F), (0xFE00, 0xFE0F), (0xFF00, 0xFFEF), (0x1D400, 0x1D7FF), (0x1F300, 0x1FAFF)]


def mixed_unicode_texts(n: int, seed: int = 0) -> list[str]:
    """`n` seeded texts: half assembled from the tricky pieces above, half random code points."""
    r = random.Random(seed)
    out = []
    for i in range(n):
        if i % 2 == 0:
            parts = [r.choice(_PIECES) for _ in range(r.randint(1, 10))]
            text = "".join(p + r.choice(_SEPARATORS) for p in parts)
        else:
            chars = []
            for _ in range(r.randint(1, 40)):
                lo, hi = r.choice(_CODEPOINT_RANGES)
                chars.append(chr(r.randint(lo, hi)) if r.random() < 0.7 else r.choice(" abcXYZ019'&;."))
            text = "".join(chars)
        out.append(text.upper() if r.random() < 0.1 else text)
    return out
