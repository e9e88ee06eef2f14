"""Write (or check) the README's generated blocks, so its numbers cannot drift from what ships.

    python scripts/readme.py          # rewrite the blocks in README.md
    python scripts/readme.py --check  # exit 1 and show the difference when a block is stale

Blocks sit between ``<!-- generated: NAME -->`` and ``<!-- end: NAME -->``:

- ``demo``: what ``cxr predict cxrtriage/assets/samples`` prints in an 80-column terminal;
- ``models``: the bundled models and their numbers, read from their sidecars and model cards.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MODELS = ROOT / "cxrtriage" / "assets" / "model"
BLOCK = re.compile(r"(<!-- generated: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- end: (?P=name) -->)", re.S)


def demo() -> str:
    """The demo's table, as a user sees it in an 80-column terminal."""
    env = {**os.environ, "COLUMNS": "80", "NO_COLOR": "1", "TERM": "dumb"}
    out = subprocess.run([sys.executable, "-m", "cxrtriage", "predict", "cxrtriage/assets/samples"], cwd=ROOT,
                         env=env, capture_output=True, text=True, check=True).stdout
    return "```\n" + "\n".join(line.rstrip() for line in out.rstrip("\n").splitlines()) + "\n```\n"


def _ci(ci: list[float] | None) -> str:
    return f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""


def _elsewhere(name: str, sidecar: dict) -> str:
    """Numbers on films the model did not learn from, where its card records them."""
    if name == "cxr-pneumonia":
        card = json.loads((MODELS / "model_card.json").read_text())
        net, ab = card["test_dev_network_without_site_fit"], card["calibrated_test_dev_a_to_b"]
        return (f"test-dev, networks alone: AUC {net['roc_auc']:.3f}{_ci(net['ci']['roc_auc'])}; site head fitted "
                f"on half A, half B (mean of {ab['splits']} halvings): AUC {ab['dev_auc']:.3f}, sensitivity "
                f"{ab['dev_sens']:.3f}, specificity {ab['dev_spec']:.3f}")
    cal = sidecar.get("calibration")
    if cal and cal.get("accuracy"):
        exp = cal["expected"]
        return (f"calibrated on test-dev ({cal['films']} films, in-sample): {len(sidecar['classes'])}-class "
                f"accuracy {cal['accuracy']['before']:.3f} -> {cal['accuracy']['after']:.3f}, any-pneumonia "
                f"sensitivity {exp['sensitivity']['value']:.3f}, specificity {exp['specificity']['value']:.3f}")
    return "none bundled: see its card"


def _validation(name: str, sidecar: dict) -> str:
    v = sidecar.get("validation") or {}
    if name == "cxr-pneumonia":  # the card measured the shipped model itself (site head and all)
        v = json.loads((MODELS / "model_card.json").read_text())["validation"]
    if "mean_auc" in v:
        return f"any finding AUC {v['roc_auc']:.3f}, mean per-finding AUC {v['mean_auc']:.3f} (n={v['n']})"
    text = f"AUC {v['roc_auc']:.3f}{_ci((v.get('ci') or {}).get('roc_auc'))}"
    if v.get("macro_auc") and len(sidecar["classes"]) > 2:
        text += f", macro AUC {v['macro_auc']:.3f}"
    return text + f" (n={v['n']})"


def models() -> str:
    """One row per bundled model: what it answers, its size, and where its numbers come from."""
    rows = ["| model | task | population | MB | validation (patient-wise split of its training films) | "
            "films it did not learn from | card |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for onnx in sorted(MODELS.glob("*.onnx"), key=lambda p: (p.stem != "cxr-pneumonia", p.stem)):
        sidecar = json.loads(onnx.with_suffix(".json").read_text())
        files = [onnx, onnx.with_suffix(".json"), onnx.with_suffix(".gate.npz")]
        mb = sum(f.stat().st_size for f in files if f.exists()) / 2**20
        card = onnx.with_suffix(".md") if onnx.with_suffix(".md").exists() else MODELS / "MODEL_CARD.md"
        rel = card.relative_to(ROOT)
        rows.append(f"| `{onnx.stem}` | {sidecar['task']} | {sidecar.get('population', '-')} | {mb:.1f} | "
                    f"{_validation(onnx.stem, sidecar)} | {_elsewhere(onnx.stem, sidecar)} | [{card.name}]({rel}) |")
    return "\n".join(rows) + "\n"


GENERATORS: dict[str, Callable[[], str]] = {"demo": demo, "models": models}


def render(text: str) -> str:
    """``text`` with every generated block made anew."""
    return BLOCK.sub(lambda m: m.group(1) + GENERATORS[m.group("name")]() + m.group(4), text)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 when a block is stale (nothing is written)")
    args = ap.parse_args()
    text = README.read_text()
    unknown = {m.group("name") for m in BLOCK.finditer(text)} - set(GENERATORS)
    if unknown:
        raise SystemExit(f"README.md has blocks no generator writes: {sorted(unknown)}")
    new = render(text)
    if args.check:
        if new != text:
            sys.stdout.writelines(difflib.unified_diff(text.splitlines(True), new.splitlines(True), "README.md",
                                                       "generated"))
            return 1
        return 0
    README.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
