"""Prediction tasks: which classes a model outputs and how to read a triage score from them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Task:
    """A classification task. ``classes[0]`` is the normal / no-finding class for single-label tasks;
    a multi-label task's classes are its findings only (no finding = all zero)."""

    name: str
    classes: tuple[str, ...]
    kind: str = "single"  # "single" (softmax over classes) or "multilabel" (sigmoid per class)
    description: str = ""
    aliases: tuple[tuple[str, str], ...] = ()  # other spellings accepted by canonical()

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

    def canonical(self, label: str) -> str:
        """The task's own spelling of ``label`` (matched case-insensitively; '-', '_' and spaces alike).

        Multi-label tasks take findings joined by '|'; "No Finding" (or nothing) means none, and
        the result lists the findings in the task's order ("No Finding" for none). Unknown names raise.
        """
        if self.kind == "multilabel":
            found = {self._match(part) for part in str(label).split("|") if _key(part) not in _NO_FINDING}
            return "|".join(c for c in self.classes if c in found) or NO_FINDING
        return self._match(_COARSE.get((self.name, label), label))

    def multi_hot(self, label: str):
        """0/1 float32 vector over ``classes`` for a multi-label ``label`` ('A|B', 'No Finding')."""
        import numpy as np

        found = set(self.canonical(label).split("|"))
        return np.array([c in found for c in self.classes], dtype=np.float32)

    def _match(self, label: str) -> str:
        lookup = {_key(c): c for c in self.classes}
        lookup.update({_key(k): v for k, v in self.aliases})
        hit = lookup.get(_key(label))
        if hit is None:
            known = ", ".join(self.classes)
            raise ValueError(f"unknown class {label!r} for task {self.name!r} (known: {known})")
        return hit


def _key(name: str) -> str:
    return "".join(ch for ch in str(name).strip().lower() if ch.isalnum())


NO_FINDING = "No Finding"
_NO_FINDING = {"", "nofinding", "nofindings", "none", "normal"}

# The findings of NIH ChestX-ray14, spelt as in its Data_Entry_2017.csv ("No Finding" is not one).
NIH14_FINDINGS = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia", "Pneumothorax",
    "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
)

# Fine labels that a coarser task accepts (a pneumonia3 manifest can train the binary task).
_COARSE = {("pneumonia", "bacterial"): "pneumonia", ("pneumonia", "viral"): "pneumonia"}

TASKS: dict[str, Task] = {
    "pneumonia": Task("pneumonia", ("normal", "pneumonia"), description="normal vs pneumonia"),
    "pneumonia3": Task(
        "pneumonia3", ("normal", "bacterial", "viral"), description="normal / bacterial / viral pneumonia"
    ),
    "covid3": Task(
        "covid3", ("normal", "covid19", "other_pneumonia"),
        description="normal / COVID-19 / other pneumonia",
        aliases=(("covid-19", "covid19"), ("covid", "covid19"), ("pneumonia", "other_pneumonia"),
                 ("no finding", "normal")),
    ),
    "nih14": Task(
        "nih14", NIH14_FINDINGS, kind="multilabel",
        description="the 14 NIH ChestX-ray14 findings (multi-label)",
    ),
}


def get_task(name: str) -> Task:
    """Look a task up by name, with a clear error for an unknown one."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; choose one of: {', '.join(TASKS)}") from None
