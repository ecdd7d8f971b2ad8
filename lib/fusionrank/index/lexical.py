"""The lexical index: BM25 (bm25s) over an item's title, brand, category and description.

Built per night beside the FAISS index (`build_index` writes it into the index
artifact's `lexical/` folder, see `lexical_dir`), searched by the hybrid retrieval
(ranks.hybrid) next to the dense index. Tokens are lower-cased alphanumeric runs;
the title is counted twice (it matters most, as in the text encoder's input).
A query token the catalog never uses contributes nothing; an item that matches no
query token is never returned (score 0 is no match).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from fusionrank.core import uri as uris
from fusionrank.core.errors import IndexError_
from fusionrank.storage import fs

LEXICAL_DIR = "lexical"
IDS_FILE = "item_ids.json"
_TOKEN = re.compile(r"[a-z0-9]+")


def tokenize(text: str | None) -> list[str]:
    return _TOKEN.findall(str(text or "").lower())


def item_document(title, brand, category, description) -> list[str]:
    """The tokens an item is indexed under (title twice: it weighs most)."""
    title_tokens = tokenize(title)
    return title_tokens + title_tokens + tokenize(brand) + tokenize(category) + tokenize(description)


def lexical_dir(index_path: str) -> str:
    """Where the lexical index of a night's index artifact lives (a URI)."""
    return uris.join(str(index_path), LEXICAL_DIR)


def has_lexical(index_path: str) -> bool:
    """Whether the index artifact at `index_path` carries a complete lexical index
    (its id list is written last)."""
    return fs.exists(uris.join(lexical_dir(index_path), IDS_FILE))


@dataclass
class LexicalIndex:
    ids: list[str]
    retriever: object  # bm25s.BM25
    vocab: frozenset

    @classmethod
    def build(cls, item_ids: Sequence[str], documents: Sequence[list[str]], k1: float = 1.2,
              b: float = 0.75) -> "LexicalIndex":
        import bm25s

        if len(item_ids) != len(documents):
            raise ValueError(f"{len(item_ids)} item ids but {len(documents)} documents")
        if not len(item_ids):
            raise IndexError_("the lexical index needs at least one item")
        retriever = bm25s.BM25(k1=k1, b=b)
        retriever.index([list(d) for d in documents], show_progress=False)
        return cls(list(map(str, item_ids)), retriever, frozenset(retriever.vocab_dict))

    @classmethod
    def from_frame(cls, frame) -> "LexicalIndex":
        """From a catalog frame with item_id, title, brand, category, description."""
        docs = [item_document(t, b, c, d) for t, b, c, d in
                zip(frame["title"], frame["brand"], frame["category"], frame["description"])]
        return cls.build(frame["item_id"].astype(str).tolist(), docs)

    def save(self, folder: str) -> None:
        """Write to `folder` (any URI of the filesystem layer); the id list goes last,
        so a reader never takes a half-written index for a complete one."""
        with tempfile.TemporaryDirectory(prefix="fusionrank-bm25-") as local:
            self.retriever.save(local, show_progress=False)
            for name in sorted(os.listdir(local)):
                fs.upload_file(os.path.join(local, name), uris.join(str(folder), name))
        fs.write_text(uris.join(str(folder), IDS_FILE), json.dumps(self.ids))

    @classmethod
    def load(cls, folder: str) -> "LexicalIndex":
        import bm25s

        folder = str(folder)
        ids_uri = uris.join(folder, IDS_FILE)
        if not fs.exists(ids_uri):
            raise IndexError_(f"no lexical index at {folder} (no {IDS_FILE}): rerun build_index for that date")
        # Object stores: a local copy once per host, keyed by what is stored.
        local = fs.local_copy(folder, "bm25-" + fs.signature(folder))
        retriever = bm25s.BM25.load(local, show_progress=False)
        ids = json.loads(fs.read_text(ids_uri))
        return cls(ids, retriever, frozenset(retriever.vocab_dict))

    def search(self, queries: Sequence[str], k: int) -> list[tuple[list[str], np.ndarray]]:
        """Per query, the (item ids, BM25 scores) of up to `k` matching items, best first
        (ties by item id)."""
        out: list[tuple[list[str], np.ndarray]] = []
        k = min(int(k), len(self.ids))
        tokens = [[t for t in tokenize(q) if t in self.vocab] for q in queries]
        asked = [i for i, t in enumerate(tokens) if t]
        results: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        if asked and k > 0:
            docs, scores = self.retriever.retrieve([tokens[i] for i in asked], k=k, show_progress=False, n_threads=1)
            results = {i: (docs[j], scores[j]) for j, i in enumerate(asked)}
        for i in range(len(queries)):
            if i not in results:
                out.append(([], np.zeros(0, dtype=np.float32)))
                continue
            docs, scores = results[i]
            keep = scores > 0
            pairs = sorted(zip((self.ids[d] for d in docs[keep]), scores[keep].astype(np.float32)),
                           key=lambda p: (-p[1], p[0]))
            out.append(([p[0] for p in pairs], np.array([p[1] for p in pairs], dtype=np.float32)))
        return out
