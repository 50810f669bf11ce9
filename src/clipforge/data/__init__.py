"""The data pipeline (application layer: imports the library, never imported by it).

- :mod:`clipforge.data.synthetic`: the synthetic shapes world (`WorldConfig`, `generate_world`).
- :mod:`clipforge.data.loader`: `DataConfig`, `build_loader` -> batches per rank, exact resume.
- :mod:`clipforge.data.sources`: shards / CSV / folders; :mod:`clipforge.data.sharding`: ranks x workers.
- :mod:`clipforge.data.decode`: safe image/caption decoding; :mod:`clipforge.data.report`: bad-data report.
- :mod:`clipforge.data.convert`: CSV/folder -> shards; :mod:`clipforge.data.cli`: `clipforge data ...`.

Submodules are imported on use, so `import clipforge.data` stays light (no torch for the
synthetic world generator).
"""
