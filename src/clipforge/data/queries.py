"""Query lists for WIT-style curation (CLIP paper, section 2.2) and the matcher that finds them in captions.

The paper searched for pairs whose text contains one of 500,000 queries: every word occurring at
least 100 times in English Wikipedia, bigrams with high pointwise mutual information, Wikipedia
article titles above a search volume and WordNet synsets. :func:`build_queries` makes such a list
from a corpus the user gives (unigrams over a count, bigrams over a PMI and a count) plus lists of
their own (titles, WordNet lemmas, one per line); :class:`QueryMatcher` finds every query a caption
contains.

Matching is on *words*: a text is NFKC-normalised and case-folded (so ``Straße`` matches
``STRASSE`` and a decomposed ``cafe\\u0301`` matches ``café``), then cut into maximal runs of
letters, digits and combining marks; everything else (spaces, punctuation, hyphens, apostrophes)
separates words. A query is the same word sequence, so ``hot dog`` matches ``Hot-dog!`` but not
``hotdog`` or ``shot dogs``, and a query containing punctuation matches the same punctuation in a
caption. Scripts written without spaces (Chinese, Japanese) form one word per run of characters.
Both sides go through :func:`words`, so the rule is the same everywhere.

The matcher is one Aho-Corasick automaton (pyahocorasick, C) over the space-joined queries with a
space on each side, run over the space-joined caption words with a space on each side: every
occurrence of every query is found in one pass over the caption, whatever the number of queries.
"""

from __future__ import annotations

import math
import os
import unicodedata
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import regex

_WORD = regex.compile(r"[\p{L}\p{N}\p{M}]+")


def words(text: str) -> list[str]:
    """The words of ``text`` after NFKC normalisation and case folding (the matching rule above)."""
    if not text.isascii():
        text = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())
    else:
        text = text.lower()
    return _WORD.findall(text)


def normalize_query(text: str) -> str:
    """A query's canonical form: its words joined by single spaces ('' when it has none)."""
    return " ".join(words(text))


# ---- building a query list from a corpus --------------------------------------------------------


@dataclass(frozen=True)
class QueryConfig:
    """min_count: a word occurring at least this often becomes a query (the paper: 100 in Wikipedia).
    bigram_min_count: a bigram must occur this often to be scored (PMI overrates rare pairs).
    min_pmi: bigrams with PMI = log(p(ab) / (p(a) p(b))) at least this (natural log) become queries.
    max_bigrams: keep at most this many bigrams, the highest PMI first (None: all over the threshold)."""

    min_count: int = 100
    bigram_min_count: int = 30
    min_pmi: float = 3.0
    max_bigrams: int | None = None


@dataclass(frozen=True)
class Query:
    text: str
    source: str  # unigram | bigram | list:<file name> | given
    count: int | None = None
    pmi: float | None = None


def read_lines(path: str | os.PathLike) -> Iterator[str]:
    """Lines of a UTF-8 text file; a line that is not UTF-8 is an error naming the file and line."""
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise ValueError(f"{path}:{n}: not UTF-8 ({err.reason} at byte {err.start})") from None


def count_unigrams(lines: Iterable[str]) -> tuple[Counter, int]:
    """(word counts, total words) of a corpus."""
    counts: Counter = Counter()
    for line in lines:
        counts.update(words(line))
    return counts, sum(counts.values())


def count_bigrams(lines: Iterable[str], vocabulary: set[str]) -> tuple[Counter, int]:
    """(counts of adjacent word pairs within a line whose words are both in ``vocabulary``, total pairs)."""
    counts: Counter = Counter()
    total = 0
    for line in lines:
        ws = words(line)
        total += max(0, len(ws) - 1)
        counts.update((a, b) for a, b in zip(ws, ws[1:]) if a in vocabulary and b in vocabulary)
    return counts, total


def pmi(pair_count: int, count_a: int, count_b: int, total_words: int, total_pairs: int) -> float:
    """Pointwise mutual information log(p(ab) / (p(a) p(b))), natural log."""
    return math.log(pair_count / total_pairs) - math.log(count_a / total_words) - math.log(count_b / total_words)


def corpus_queries(corpus: list[str | os.PathLike], config: QueryConfig) -> list[Query]:
    """Unigrams over ``min_count`` and high-PMI bigrams of the corpus files (read twice, streamed)."""
    def lines() -> Iterator[str]:
        for path in corpus:
            yield from read_lines(path)

    unigrams, total_words = count_unigrams(lines())
    out = [Query(w, "unigram", c) for w, c in unigrams.items() if c >= config.min_count]
    frequent = {w for w, c in unigrams.items() if c >= config.bigram_min_count}
    pairs, total_pairs = count_bigrams(lines(), frequent)
    scored = []
    for (a, b), c in pairs.items():
        if c >= config.bigram_min_count:
            score = pmi(c, unigrams[a], unigrams[b], total_words, total_pairs)
            if score >= config.min_pmi:
                scored.append(Query(f"{a} {b}", "bigram", c, round(score, 4)))
    scored.sort(key=lambda q: (-q.pmi, q.text))
    return out + scored[: config.max_bigrams]


def list_queries(path: str | os.PathLike, source: str | None = None) -> list[Query]:
    """Queries from a file, one per line (titles, WordNet lemmas, a ready list); '#' lines are comments.
    A ``.tsv`` written by :func:`write_queries` keeps its sources, counts and PMI."""
    path = Path(path)
    out = []
    for n, line in enumerate(read_lines(path), 1):
        if path.suffix == ".tsv":
            if n == 1 and line.startswith("query\t"):
                continue
            text, src, count, score = (line.rstrip("\n").split("\t") + ["", "", ""])[:4]
            out.append(Query(text, src or "given", int(count) if count else None, float(score) if score else None))
        elif line.strip() and not line.lstrip().startswith("#"):
            out.append(Query(line.strip(), source or f"list:{path.name}"))
    return out


def merge_queries(groups: Iterable[list[Query]]) -> list[Query]:
    """Normalise every query, drop empty ones, keep the first of each normal form; sorted by text."""
    seen: dict[str, Query] = {}
    for group in groups:
        for q in group:
            text = normalize_query(q.text)
            if text and text not in seen:
                seen[text] = Query(text, q.source, q.count, q.pmi)
    return [seen[t] for t in sorted(seen)]


def write_queries(queries: list[Query], out: str | os.PathLike) -> Path:
    """``queries.tsv`` (query, source, count, pmi) atomically; the query column alone is a ready list."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("query\tsource\tcount\tpmi\n")
        for q in queries:
            f.write(f"{q.text}\t{q.source}\t{'' if q.count is None else q.count}\t{'' if q.pmi is None else q.pmi}\n")
    os.replace(tmp, path)
    return path


def load_query_texts(path: str | os.PathLike) -> list[str]:
    """The normalised, de-duplicated, sorted query texts of a list file (``.txt`` or ``.tsv``)."""
    queries = merge_queries([list_queries(path, "given")])
    if not queries:
        raise ValueError(f"{path}: no queries (one per line, or a queries.tsv from `clipforge data queries`)")
    return [q.text for q in queries]


# ---- matching ---------------------------------------------------------------------------------------


class QueryMatcher:
    """Finds which of ``queries`` (normalised texts, ids = positions) a caption contains, whole words only.

    Picklable (the automaton pickles), so a distributed engine can ship it to its workers.
    """

    def __init__(self, queries: list[str]):
        import ahocorasick

        self.queries = list(queries)
        self._automaton = ahocorasick.Automaton(ahocorasick.STORE_INTS)
        for i, text in enumerate(self.queries):
            if not text or text != normalize_query(text):
                raise ValueError(f"query {i} {text!r} is not normalised; pass it through normalize_query first")
            self._automaton.add_word(f" {text} ", i)
        self._automaton.make_automaton()

    def __len__(self) -> int:
        return len(self.queries)

    def match_words(self, caption_words: list[str]) -> list[int]:
        """Sorted distinct ids of the queries that occur in a caption's words."""
        if not caption_words or not self.queries:
            return []
        return sorted({v for _, v in self._automaton.iter(" " + " ".join(caption_words) + " ")})

    def match(self, caption: str) -> list[int]:
        return self.match_words(words(caption))


__all__ = ["Query", "QueryConfig", "QueryMatcher", "corpus_queries", "count_bigrams", "count_unigrams",
           "list_queries", "load_query_texts", "merge_queries", "normalize_query", "pmi", "words", "write_queries"]
