"""The registered model names, one module per source (see clipforge.registry)."""
