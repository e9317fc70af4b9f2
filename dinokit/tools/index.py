"""Image search over frozen features: a faiss index (exact, IVF or HNSW) with cosine similarity and paths.

Vectors are L2-normalised and searched by inner product, so scores are cosine similarities. Each image is one
vector: its CLS token, or the mean of its patch tokens (`source="patches"`, often better for instance-level
retrieval of scenes). The index keeps the image paths in insertion order; `add` skips paths already present,
so rebuilding over a grown folder only adds the new images.

On disk (a folder): `index.faiss`, `paths.json`, `meta.json` (kind, dim, source, settings), each replaced
atomically. IVF (`nlist` clusters, `nprobe` searched) is trained on the first batch it receives; HNSW needs no
training. Exact search is faiss' flat inner-product index.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from ..atomic import atomic_write, atomic_write_text
from ..errors import UserError, require

KINDS = ("exact", "ivf", "hnsw")


def _faiss():
    return require("faiss", "faiss", "the feature index")


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class FeatureIndex:
    """Cosine nearest-neighbour search over image vectors, with the images' paths.

    `kind`: "exact" | "ivf" | "hnsw". IVF: `nlist` clusters (default ≈ 4·√N of the first batch, at most N/39),
    `nprobe` clusters searched. HNSW: `hnsw_m` links per node, `ef_search` candidates at query time."""

    def __init__(
        self, dim: int, kind: str = "exact", source: str = "cls", nlist: int | None = None, nprobe: int = 16,
        hnsw_m: int = 32, ef_search: int = 128,
    ) -> None:  # fmt: skip
        if kind not in KINDS:
            raise UserError(f"index kind must be one of {KINDS}, got {kind!r}")
        if source not in ("cls", "patches"):
            raise UserError(f"index source must be 'cls' or 'patches' (mean-pooled), got {source!r}")
        self.dim, self.kind, self.source = dim, kind, source
        self.settings = {"nlist": nlist, "nprobe": nprobe, "hnsw_m": hnsw_m, "ef_search": ef_search}
        self.paths: list[str] = []
        self._known: set[str] = set()
        self.index = None if kind == "ivf" else self._create(None)

    def _create(self, n_train: int | None):
        faiss = _faiss()
        ip = faiss.METRIC_INNER_PRODUCT
        if self.kind == "exact":
            return faiss.IndexFlatIP(self.dim)
        if self.kind == "hnsw":
            index = faiss.IndexHNSWFlat(self.dim, self.settings["hnsw_m"], ip)
            index.hnsw.efSearch = self.settings["ef_search"]
            return index
        nlist = self.settings["nlist"] or max(1, min(int(4 * math.sqrt(n_train)), n_train // 39))
        self.settings["nlist"] = nlist
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(self.dim), self.dim, nlist, ip)
        index.nprobe = self.settings["nprobe"]
        return index

    def __len__(self) -> int:
        return len(self.paths)

    def add(self, vectors: np.ndarray, paths: list[str]) -> int:
        """Add vectors `[N, D]` for `paths`, skipping paths already indexed; returns the number added."""
        vectors = np.asarray(vectors)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim or len(vectors) != len(paths):
            raise UserError(f"expected {len(paths)} vectors of dim {self.dim}, got an array of shape {vectors.shape}")
        new = [i for i, p in enumerate(paths) if p not in self._known]
        if not new:
            return 0
        x = _unit(vectors[new])
        if self.index is None:  # IVF: train on the first batch
            self.index = self._create(len(x))
            if len(x) < self.settings["nlist"]:
                raise UserError(f"an IVF index with {self.settings['nlist']} lists needs at least that many vectors "
                                f"to train; got {len(x)} (use --nlist or the exact index)")  # fmt: skip
            self.index.train(x)
        self.index.add(x)
        added = [paths[i] for i in new]
        self.paths += added
        self._known.update(added)
        return len(added)

    def search(self, queries: np.ndarray, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
        """Cosine scores `[Q, k]` and row indices `[Q, k]` (−1 where fewer than k results)."""
        if not self.paths:
            raise UserError("the index is empty")
        queries = np.atleast_2d(np.asarray(queries))
        if queries.shape[1] != self.dim:
            raise UserError(f"query vectors have dim {queries.shape[1]}, the index {self.dim}")
        return self.index.search(_unit(queries), min(k, len(self.paths)))

    def search_paths(self, queries: np.ndarray, k: int = 5) -> list[list[tuple[str, float]]]:
        """Per query, the top-k `(path, cosine)` pairs, best first."""
        scores, rows = self.search(queries, k)
        return [[(self.paths[r], float(s)) for s, r in zip(srow, rrow) if r >= 0] for srow, rrow in zip(scores, rows)]

    # --------------------------------------------------------------------------------------------- disk
    def save(self, folder: str | os.PathLike) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        meta = {"dim": self.dim, "kind": self.kind, "source": self.source, "settings": self.settings}
        if self.index is not None:
            atomic_write(folder / "index.faiss", lambda tmp: _faiss().write_index(self.index, str(tmp)))
        for name, obj in (("paths.json", self.paths), ("meta.json", meta)):
            atomic_write_text(folder / name, json.dumps(obj, indent=1))
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike) -> FeatureIndex:
        folder = Path(folder)
        if not (folder / "meta.json").exists():
            raise UserError(f"{folder}: not a feature index (no meta.json); build one with `dinokit index build`")
        meta = json.loads((folder / "meta.json").read_text())
        index = cls(meta["dim"], meta["kind"], meta["source"], **meta["settings"])
        index.paths = json.loads((folder / "paths.json").read_text())
        index._known = set(index.paths)
        if (folder / "index.faiss").exists():
            index.index = _faiss().read_index(str(folder / "index.faiss"))
        if (index.index.ntotal if index.index is not None else 0) != len(index.paths):
            raise UserError(f"{folder}: index.faiss and paths.json disagree (interrupted write?); rebuild it")
        return index

    @classmethod
    def from_features(cls, features, kind: str = "exact", source: str = "cls", **settings) -> FeatureIndex:
        """An index over a `read_features` folder (or `FeatureStore`)."""
        from .extract import FeatureStore

        store = features if isinstance(features, FeatureStore) else FeatureStore(features)
        paths, vectors = store.vectors(source)
        index = cls(vectors.shape[1], kind, source, **settings)
        index.add(vectors, paths)
        return index


# ------------------------------------------------------------------------------------- images → index
def _is_feature_folder(path: str | os.PathLike) -> bool:
    return (Path(path) / "meta.json").exists() and (Path(path) / "index.jsonl").exists()


def build_index(
    inputs: list[str], output: str | os.PathLike, backbone: str | None = None, kind: str = "exact",
    source: str = "cls", size: int | None = 224, **settings,
) -> FeatureIndex:  # fmt: skip
    """Index images (extracting their features into `output/features`, resumably) or an extracted features
    folder. An existing index in `output` is extended with the images it does not hold yet."""
    from .extract import FeatureStore, extract_features

    _faiss()  # before the images are embedded, which can take hours
    output = Path(output)
    if len(inputs) == 1 and _is_feature_folder(inputs[0]):
        features = Path(inputs[0])
    else:
        if backbone is None:
            raise UserError("indexing images needs --backbone (or give one folder written by `dinokit extract`)")
        from ..models import backbone_from_spec

        features = extract_features(backbone_from_spec(backbone), inputs, output / "features", size=size,
                                    backbone_name=backbone)  # fmt: skip
    paths, vectors = FeatureStore(features).vectors(source)
    if (output / "meta.json").exists():
        index = FeatureIndex.load(output)
        if index.kind != kind or index.source != source:
            raise UserError(f"{output} holds a {index.kind} index over {index.source}; use another --output")
    else:
        index = FeatureIndex(vectors.shape[1], kind, source, **settings)
    index.add(vectors, paths)
    meta_features = json.loads((Path(features) / "meta.json").read_text())
    index.save(output)
    (output / "features.json").write_text(json.dumps({"folder": str(Path(features).resolve()), **meta_features}))
    return index


def search_index(
    index_folder: str | os.PathLike, queries: list[str], k: int = 5, backbone: str | None = None
) -> dict[str, list[tuple[str, float]]]:
    """Top-k `(path, cosine)` for each query image, embedded with the index's backbone and preprocessing."""
    import tempfile

    from ..models import backbone_from_spec
    from .extract import FeatureStore, extract_features

    index = FeatureIndex.load(index_folder)
    recorded = json.loads((Path(index_folder) / "features.json").read_text())
    spec = backbone or recorded.get("backbone")
    if not spec:
        raise UserError("the index does not record its backbone; pass --backbone")
    with tempfile.TemporaryDirectory() as tmp:
        extract_features(backbone_from_spec(spec), queries, tmp, size=recorded["preprocessing"]["size"],
                         tile=recorded["tile"], overlap=recorded["overlap"], progress=False)  # fmt: skip
        paths, vectors = FeatureStore(tmp).vectors(index.source)
    return dict(zip(paths, index.search_paths(vectors, k)))
