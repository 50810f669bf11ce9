"""Using a trained CLIP: embeddings at scale, a vector index, search, an HTTP service with a web page.

- :mod:`clipforge.serve.encoder`: a loaded model as an object that turns images/texts into unit vectors.
- :mod:`clipforge.serve.embed`: resumable batch embedding of folders, CSVs, shards and text files.
- :mod:`clipforge.serve.index`: a FAISS index (exact or HNSW) with the ids and sources of its rows.
- :mod:`clipforge.serve.app`: the FastAPI application (embed, search, classify, thumbnails, the page).
- :mod:`clipforge.serve.limits` / :mod:`clipforge.serve.security`: input limits, auth, safe URL fetching.
"""
