"""fusionrank: nightly Spark indexing and ranking for e-commerce catalogs."""

__version__ = "0.1.0"

__all__ = ["search", "SearchHit", "__version__"]


def __getattr__(name: str):
    # Lazy, so `import fusionrank` stays light (no torch, FAISS or Spark). The
    # implementation lives in fusionrank.interfaces.search.
    if name in ("search", "SearchHit"):
        from fusionrank.interfaces import search

        return getattr(search, name)
    raise AttributeError(f"module 'fusionrank' has no attribute {name!r}")
