"""The one pipeline every triager runs: decode -> (gate -> network, in ``predict_radiographs``) ->
:class:`Prediction`, with a film that cannot be read turned into a result, never an exception."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Union

import numpy as np

from cxrtriage.contract import Prediction
from cxrtriage.io import ImageReadError, Radiograph, read_radiograph, read_radiograph_bytes

#: What the pipeline takes: a file path, a file's bytes, a 2-D array or a decoded radiograph.
Input = Union[str, Path, bytes, np.ndarray, Radiograph]


def decode(item: Input, name: str | None = None) -> Radiograph:
    """Any :data:`Input` to a radiograph; raises :class:`ImageReadError` or ``OSError``."""
    if isinstance(item, Radiograph):
        return item
    if isinstance(item, (bytes, bytearray, memoryview)):
        return read_radiograph_bytes(bytes(item), name or "<bytes>")
    if isinstance(item, np.ndarray):
        return Radiograph.from_array(item, name or "<array>")
    rg = read_radiograph(item)
    if name:
        rg.source = name
    return rg


class Triager:
    """Decoding and batching around ``predict_radiographs`` (gate + network), shared by
    :class:`~cxrtriage.infer.Engine` (one model) and :class:`~cxrtriage.infer.Router` (the bundled
    models, each film to the one that can judge it)."""

    model_ref: dict[str, str]

    def describe(self) -> dict:
        raise NotImplementedError

    def predict_radiographs(self, rgs: Sequence[Radiograph], decode_ms: Sequence[float] | None = None,
                            heatmap: bool = True) -> list[Prediction]:
        raise NotImplementedError

    # -- the pipeline ----------------------------------------------------------
    def predict(self, item: Input, name: str | None = None, heatmap: bool = True) -> Prediction:
        """Triage one film (path, bytes, 2-D array or :class:`Radiograph`)."""
        return self.predict_batch([item], [name] if name else None, heatmap=heatmap)[0]

    def predict_batch(self, items: Sequence[Input], names: Sequence[str | None] | None = None,
                      heatmap: bool = False, batch_size: int = 32, progress: bool = False) -> list[Prediction]:
        """Triage many films, ``batch_size`` at a time; a film that cannot be read becomes a
        :class:`Prediction` with ``error`` set, in its place."""
        names = list(names) if names is not None else [None] * len(items)
        results: list[Prediction] = []
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(items), desc="triage", unit="img")
        for s in range(0, len(items), batch_size):
            results.extend(self._predict_chunk(items[s:s + batch_size], names[s:s + batch_size], heatmap))
            if bar:
                bar.update(min(batch_size, len(items) - s))
        if bar:
            bar.close()
        return results

    def _predict_chunk(self, items: Sequence[Input], names: Sequence[str | None], heatmap: bool) -> list[Prediction]:
        out: list[Prediction | None] = [None] * len(items)
        rgs, times, slots = [], [], []
        for j, (item, name) in enumerate(zip(items, names)):
            t0 = time.perf_counter()
            try:
                rgs.append(decode(item, name))
            except (ImageReadError, OSError) as exc:
                source = name or (str(item) if isinstance(item, (str, Path)) else "<input>")
                out[j] = Prediction.failed(source, exc, self.model_ref)
                continue
            times.append((time.perf_counter() - t0) * 1000)
            slots.append(j)
        for j, p in zip(slots, self.predict_radiographs(rgs, times, heatmap=heatmap) if rgs else []):
            out[j] = p
        return out  # type: ignore[return-value]

    # -- convenience ------------------------------------------------------------
    def predict_bytes(self, data: bytes, name: str = "<upload>", heatmap: bool = True) -> Prediction:
        """Decode and triage one file's bytes."""
        return self.predict(data, name, heatmap=heatmap)

    def predict_files(self, paths: Sequence[str | Path], batch_size: int = 32, heatmap: bool = False,
                      progress: bool = False) -> list[Prediction]:
        """Triage files from disk, in batches."""
        return self.predict_batch([str(p) for p in paths], None, heatmap, batch_size, progress)
