"""Prediction tasks: which classes a model outputs and how to read a triage score from them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Task:
    """A classification task. ``classes[0]`` is the normal / no-finding class for single-label tasks."""

    name: str
    classes: tuple[str, ...]
    kind: str = "single"  # "single" (softmax over classes) or "multilabel" (sigmoid per class)
    description: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def index(self, label: str) -> int:
        label = _COARSE.get((self.name, label), label)
        try:
            return self.classes.index(label)
        except ValueError:
            known = ", ".join(self.classes)
            raise ValueError(f"unknown class {label!r} for task {self.name!r} (known: {known})") from None


# Fine labels that a coarser task accepts (a pneumonia3 manifest can train the binary task).
_COARSE = {("pneumonia", "bacterial"): "pneumonia", ("pneumonia", "viral"): "pneumonia"}

TASKS: dict[str, Task] = {
    "pneumonia": Task("pneumonia", ("normal", "pneumonia"), description="normal vs pneumonia"),
    "pneumonia3": Task(
        "pneumonia3", ("normal", "bacterial", "viral"), description="normal / bacterial / viral pneumonia"
    ),
}


def get_task(name: str) -> Task:
    """Look a task up by name, with a clear error for an unknown one."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; choose one of: {', '.join(TASKS)}") from None
