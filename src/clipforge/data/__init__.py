"""The data pipeline (application layer: imports the library, never imported by it).

- :mod:`~clipforge.data.synthetic`: the synthetic shapes world (``WorldConfig``, ``generate_world``);
  scenes in :mod:`~clipforge.data.world`, drawing in :mod:`~clipforge.data.render`, captions in
  :mod:`~clipforge.data.captions`, evaluation sets in :mod:`~clipforge.data.world_eval`.
- :mod:`~clipforge.data.loader`: ``DataConfig``, ``build_loader`` -> batches per rank, exact resume.
- :mod:`~clipforge.data.sources`: tar shards / CSV / folders; :mod:`~clipforge.data.sharding`:
  ranks x workers, shuffling, padding.
- :mod:`~clipforge.data.decode`: safe image/caption decoding; :mod:`~clipforge.data.report`: the
  bad-data report and error budget; :mod:`~clipforge.data.check`: scan a dataset.
- :mod:`~clipforge.data.convert`: CSV/folder -> shards; :mod:`~clipforge.data.cli`: ``clipforge data``.
- Curation (``clipforge data queries|curate|download``): :mod:`~clipforge.data.queries` (query lists,
  the whole-word matcher), :mod:`~clipforge.data.pool` (reading pools), :mod:`~clipforge.data.curate`
  (scan, select, write; :mod:`~clipforge.data.curate_scan`, :mod:`~clipforge.data.curate_output`),
  :mod:`~clipforge.data.balance` (the selection rule), :mod:`~clipforge.data.curate_spark` (the same on
  Spark), :mod:`~clipforge.data.image_filters` (CLIP score, decontamination),
  :mod:`~clipforge.data.download` (img2dataset).

Submodules are imported on use. The synthetic world's modules need only numpy and Pillow (no
torch), so its worker processes stay small.
"""
