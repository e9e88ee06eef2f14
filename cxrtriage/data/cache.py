"""Preprocessed image cache: resized uint8 arrays in a memory-mapped file.

The key is a hash of the file list (path, size, mtime) and the image size, so a
changed or added file makes a new cache. Only the first use decodes the images.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from cxrtriage.contract import InputSpec
from cxrtriage.contract.preprocess import to_model_input
from cxrtriage.io import read_radiograph


def default_cache_dir() -> Path:
    return Path(os.environ.get("CXR_CACHE_DIR", Path.home() / ".cache" / "cxr-triage"))


def cache_key(paths: list[str], size: int) -> str:
    h = hashlib.sha256(f"v1|{size}".encode())
    for p in paths:
        st = os.stat(p)
        h.update(f"|{p}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:20]


def _load(path: str, size: int) -> np.ndarray:
    return to_model_input(read_radiograph(path), size)


def load_cached(
    paths: list[str], size: int, cache_dir: str | Path | None = None, workers: int | None = None,
    progress: bool = True, intensity: str = "none", border: str = "keep",
) -> np.ndarray:
    """Return an (N, size, size) uint8 array of the images, decoding only on the first call; the
    cache holds them before ``border`` and ``intensity`` (a model's own steps), applied on the way out."""
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = cache_key(paths, size)
    data_file = cache_dir / f"{key}.u8"
    info_file = cache_dir / f"{key}.json"
    shape = (len(paths), size, size)
    if info_file.exists() and data_file.exists():
        return _model_steps(np.memmap(data_file, dtype=np.uint8, mode="r", shape=shape), intensity, border)
    tmp = data_file.with_suffix(f".tmp{os.getpid()}")
    mm = np.memmap(tmp, dtype=np.uint8, mode="w+", shape=shape)
    workers = workers or min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        it = pool.map(lambda p: _load(p, size), paths)
        for i, arr in enumerate(tqdm(it, total=len(paths), desc=f"decode+cache {size}px", disable=not progress)):
            mm[i] = arr
    mm.flush()
    del mm
    os.replace(tmp, data_file)
    info_file.write_text(json.dumps({"n": len(paths), "size": size, "first": paths[:1]}))
    return _model_steps(np.memmap(data_file, dtype=np.uint8, mode="r", shape=shape), intensity, border)


def _model_steps(images: np.ndarray, intensity: str, border: str) -> np.ndarray:
    """The model's own border and intensity steps, by the contract (the cache holds films resized only)."""
    return InputSpec(size=int(images.shape[-1]), intensity=intensity, border=border).prepare_resized(images).images
