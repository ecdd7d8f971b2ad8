"""fusionrank: nightly Spark indexing and ranking for e-commerce catalogs."""

__version__ = "0.1.0"
