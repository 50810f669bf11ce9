"""OpenAI's text cleaning and pre-tokenization, with a fast path that is provably identical.

Cleaning (clip/simple_tokenizer.py): `ftfy.fix_text`, `html.unescape` twice, strip, collapse
whitespace, lowercase. `ftfy` costs tens of microseconds a caption, more than everything else, so
texts made only of "plain ASCII" skip it. Plain ASCII = tab, line feed, carriage return and the
printable characters 0x20-0x7E except '&'. For such a text every step of ftfy 6 is the identity
except `fix_line_breaks` ('\\r\\n' and '\\r' become '\\n'):
  - unescape_html needs '&'; the mojibake fixer returns ASCII text unchanged; c1 controls, latin
    ligatures, character width, curly quotes and surrogates only touch non-ASCII code points;
    terminal escapes need ESC (0x1B); remove_control_chars deletes 0x00-0x08, 0x0B, 0x0E-0x1F, 0x7F,
    none of them plain; NFC leaves ASCII unchanged.
  - html.unescape returns its input when there is no '&'.
  - '\\r' and '\\n' are both whitespace, so the whitespace collapse erases the one change ftfy made.
Hence clean(t) == " ".join(t.split()).lower() for plain t. tests/test_tokenizer_cleaning.py checks
this claim against ftfy on thousands of generated strings.
"""

from __future__ import annotations

import html

import ftfy
import regex

# Bytes allowed in a plain-ASCII text (see the module docstring for why each one is safe).
PLAIN_ASCII_BYTES = bytes([0x09, 0x0A, 0x0D, *(b for b in range(0x20, 0x7F) if b != ord("&"))])

# OpenAI's pre-tokenizer, after the special tokens: contractions, runs of letters, single digits,
# runs of other non-space characters. Applied with IGNORECASE to the lowercased text, as OpenAI does.
WORD_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def compile_pattern(special_tokens: tuple[str, ...] | list[str]) -> regex.Pattern:
    """The pre-tokenization regex: special tokens first, so they stay whole (OpenAI's order)."""
    specials = "|".join(regex.escape(t) for t in special_tokens)
    return regex.compile(f"{specials}|{WORD_PATTERN}" if specials else WORD_PATTERN, regex.IGNORECASE)


def is_plain_ascii(text: str) -> bool:
    """True when ftfy and html.unescape are provably no-ops on `text` (up to whitespace)."""
    return text.isascii() and not text.encode("ascii").translate(None, PLAIN_ASCII_BYTES)


def clean_text(text: str) -> str:
    """OpenAI's cleaning: ftfy, html.unescape twice, whitespace collapse, lowercase."""
    if is_plain_ascii(text):
        return " ".join(text.split()).lower()
    return reference_clean(text)


def reference_clean(text: str) -> str:
    """OpenAI's cleaning, step by step with no shortcut (basic_clean + whitespace_clean + lower)."""
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text))
    text = text.strip()
    return " ".join(text.split()).strip().lower()


def cap_raw_text(text: str, max_chars: int) -> str:
    """A prefix of `text` of at most `max_chars`, cut where cleaning is local.

    Preferably just after a line break in the second half: ftfy fixes each line on its own, so the
    lines kept are cleaned exactly as in the full text. Otherwise at a space (HTML entities, mojibake
    sequences and the final-sigma rule of lower() never span one), otherwise hard. Only ftfy's
    per-line mojibake detection can then see a different line, so the cut matters only for a line
    longer than `max_chars` that contains mojibake.
    """
    if len(text) <= max_chars:
        return text
    half = max_chars // 2
    cut = text.rfind("\n", half, max_chars)
    if cut < 0:
        cut = text.rfind(" ", half, max_chars)
    return text[: cut + 1] if cut >= 0 else text[:max_chars]
