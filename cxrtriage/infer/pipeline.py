"""The one pipeline every predictor runs: decode -> (gate -> network, in ``predict_radiographs``) ->
:class:`Prediction`, with a film that cannot be read turned into a result, never an exception.

:meth:`Predictor.score` is the one batch-scoring step: the CLI, the Python API, the service's
worker, the PACS bridge, bulk triage and ``cxr explain`` all call it (or ``predict_batch``, its
predictions alone); :func:`decode_each` is its decode half, which calibration uses."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np

from cxrtriage.contract import Prediction
from cxrtriage.io import ImageReadError, Radiograph, read_radiograph, read_radiograph_bytes

#: What the pipeline takes: a file path, a file's bytes, a 2-D array or a decoded radiograph (or,
#: from a caller that decoded under its own limits, the failed :class:`Prediction` of an input it
#: could not read, which passes through in its place).
Input = Union[str, Path, bytes, np.ndarray, Radiograph, Prediction]


def decode(item: Input, name: str | None = None, max_pixels: int | None = None) -> Radiograph:
    """Any :data:`Input` to a radiograph; raises :class:`ImageReadError` or ``OSError``."""
    if isinstance(item, Prediction):
        raise ImageReadError(item.error or "the input could not be read")
    if isinstance(item, Radiograph):
        return item
    if isinstance(item, (bytes, bytearray, memoryview)):
        return read_radiograph_bytes(bytes(item), name or "<bytes>", max_pixels=max_pixels)
    if isinstance(item, np.ndarray):
        return Radiograph.from_array(item, name or "<array>")
    rg = read_radiograph(item, max_pixels=max_pixels)
    if name:
        rg.source = name
    return rg


def source_name(item: Input, name: str | None = None) -> str:
    """How a result names its input when the input could not be read."""
    if name:
        return name
    if isinstance(item, Radiograph):
        return item.source
    return str(item) if isinstance(item, (str, Path)) else "<input>"


def decode_each(items: Sequence[Input], names: Sequence[str | None] | None = None,
                model: dict[str, str] | None = None, max_pixels: int | None = None
                ) -> list[tuple[Radiograph | Prediction, float]]:
    """Decode every item: ``(radiograph, milliseconds)`` or, for one that cannot be read, the
    failed :class:`Prediction` saying why (naming ``model``). Never raises for a bad input."""
    names = list(names) if names is not None else [None] * len(items)
    out: list[tuple[Radiograph | Prediction, float]] = []
    for item, name in zip(items, names):
        if isinstance(item, Prediction):  # already failed upstream: its result as it is
            out.append((item, 0.0))
            continue
        t0 = time.perf_counter()
        try:
            out.append((decode(item, name, max_pixels), (time.perf_counter() - t0) * 1000))
        except (ImageReadError, OSError) as exc:
            out.append((Prediction.failed(source_name(item, name), exc, model), 0.0))
    return out


@dataclass
class Scored:
    """One input after the batch-scoring step: its prediction and, when it could be read, the
    decoded radiograph (the PACS bridge writes results with its header and pixels)."""

    prediction: Prediction
    radiograph: Radiograph | None = None


class Predictor:
    """What every way of triaging films answers to: :class:`~cxrtriage.infer.Engine` (one model)
    and :class:`~cxrtriage.infer.Router` (the bundled models, each film to the one that can judge
    it). Get one from :func:`cxrtriage.infer.load_model`."""

    @property
    def model_ref(self) -> dict[str, str]:
        """The name and version a result carries."""
        raise NotImplementedError

    @property
    def classes(self) -> tuple[str, ...]:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        raise NotImplementedError

    def predict_radiographs(self, rgs: Sequence[Radiograph], decode_ms: Sequence[float] | None = None,
                            heatmap: bool = True) -> list[Prediction]:
        raise NotImplementedError

    # -- the pipeline ----------------------------------------------------------
    def score(self, items: Sequence[Input], names: Sequence[str | None] | None = None, heatmap: bool = False,
              max_pixels: int | None = None) -> list[Scored]:
        """The one batch-scoring step: decode each item, score the readable ones as one batch;
        an input that cannot be read becomes a prediction with ``error`` set, in its place."""
        decoded = decode_each(items, names, self.model_ref, max_pixels)
        slots = [j for j, (d, _) in enumerate(decoded) if isinstance(d, Radiograph)]
        rgs: list[Radiograph] = [decoded[j][0] for j in slots]  # type: ignore[misc]
        preds = self.predict_radiographs(rgs, [decoded[j][1] for j in slots], heatmap=heatmap) if rgs else []
        out = [Scored(d) if isinstance(d, Prediction) else Scored(Prediction(source=d.source), d) for d, _ in decoded]
        for j, p in zip(slots, preds):
            out[j].prediction = p
        return out

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
            chunk = self.score(items[s:s + batch_size], names[s:s + batch_size], heatmap=heatmap)
            results.extend(c.prediction for c in chunk)
            if bar:
                bar.update(len(chunk))
        if bar:
            bar.close()
        return results

    # -- convenience ------------------------------------------------------------
    def predict_bytes(self, data: bytes, name: str = "<upload>", heatmap: bool = True) -> Prediction:
        """Decode and triage one file's bytes."""
        return self.predict(data, name, heatmap=heatmap)

    def predict_files(self, paths: Sequence[str | Path], batch_size: int = 32, heatmap: bool = False,
                      progress: bool = False) -> list[Prediction]:
        """Triage files from disk, in batches."""
        return self.predict_batch([str(p) for p in paths], None, heatmap, batch_size, progress)
