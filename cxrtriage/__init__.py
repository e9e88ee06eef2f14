"""cxr-triage: a chest X-ray triage assistant.

A decision aid that sorts a reading queue; it is not a diagnostic device.

    >>> import cxrtriage
    >>> model = cxrtriage.load_model()               # each film to the bundled model that can judge it
    >>> result = model.predict("film.dcm")          # a path, bytes, a 2-D array or a Radiograph
    >>> result.label, result.score, result.priority  # e.g. ('pneumonia', 0.97, 'review')
    >>> result.heatmap                               # where it looked: the network's grid (14 x 14), 0..1
    >>> model.predict_batch(["a.dcm", "b.png"])      # a list, in order; bad files give results with .error
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from cxrtriage.about import DISCLAIMER, __version__

if TYPE_CHECKING:
    from cxrtriage.infer import Predictor

__all__ = ["DISCLAIMER", "__version__", "list_models", "load_model"]


def load_model(model: str | Path | None = None, *, threads: int | None = None, gate: bool = True,
               tta: bool = False) -> Predictor:
    """A model ready to triage films, chosen as ``cxr predict`` chooses: None routes each film to
    the bundled model that can judge it (by DICOM patient age, else by the models' quality gates);
    a bundled model's name (see :func:`list_models`), an ``.onnx`` file with its sidecar or a
    training run folder gives that model alone.

    The returned :class:`~cxrtriage.infer.Predictor` has ``predict(film)`` and
    ``predict_batch(films)``, giving :class:`~cxrtriage.contract.Prediction` results (each names
    the model that scored it)."""
    from cxrtriage.infer import load_model as _load

    return _load(model, threads=threads, gate=gate, tta=tta)


def list_models() -> list[str]:
    """The names of the models bundled with the package, the default first."""
    from cxrtriage.infer import bundled_models

    return list(bundled_models())
