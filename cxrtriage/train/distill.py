"""Knowledge distillation: a fast student learns an exported teacher's probabilities (e.g. an
ensemble too slow to serve) beside the labels.

The teacher is any model the engine loads (a bundled name, an ``.onnx``, a run or ensemble
folder). Its probabilities on the training images are computed once, at its own input size
and intensity step, before training; each augmented view of an image learns its image's
teacher probabilities. Loss: ``(1 - w) * labels' cross-entropy + w * T^2 * KL(teacher_T || student_T)``
(Hinton et al. 2015), with ``T`` the softening temperature.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from cxrtriage.data import load_cached


def teacher_probs(teacher: str, paths: list[str], classes: tuple[str, ...], cache_dir: str | None,
                  batch: int = 64, progress: bool = False) -> np.ndarray:
    """The teacher's class probabilities (N, C) on ``paths``; refuses a teacher of other classes."""
    from cxrtriage.infer import load_engine
    from cxrtriage.models.export import run_onnx

    engine = load_engine(teacher, gate=False)
    if tuple(engine.spec.classes) != tuple(classes):
        raise ValueError(f"the teacher {teacher} answers {list(engine.spec.classes)}, the task needs {list(classes)}")
    if engine.spec.kind != "single":
        raise ValueError("distillation needs a single-label teacher (softmax probabilities)")
    images = load_cached(paths, engine.spec.input_size, cache_dir, progress=progress,
                         intensity=engine.spec.input.intensity, border=engine.spec.input.border)
    return run_onnx(engine.onnx_path, images, ["probs"], batch=batch)["probs"].astype(np.float32)


def distill_loss(logits: torch.Tensor, teacher_p: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-image ``T^2 * KL(teacher_T || student_T)`` (teacher probabilities softened by ``T``)."""
    t = temperature
    soft = F.softmax(torch.log(teacher_p.clamp_min(1e-6)) / t, dim=1)
    return F.kl_div(F.log_softmax(logits / t, dim=1), soft, reduction="none").sum(1) * t * t


__all__ = ["distill_loss", "teacher_probs"]
