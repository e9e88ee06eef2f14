"""Site head: last-layer retraining on a site's labelled films (deep feature reweighting,
Kirichenko et al., ICLR 2023), in the form of a correction to the model rather than a new model.

The network's own class probabilities ``p`` stay the starting point; the site's films fit one
linear term on the network's embedding (standardised) per abnormal class,

    probs = softmax(log p + [0, e @ W + b])

with an L2 penalty on ``W`` that pulls the fit back to the model as it was (``W = 0``). The
correction is written into a copy of the ONNX graph (``probs`` computed after it), so every path
that runs the graph (predict, evaluate, serve, PACS) takes it unchanged; the heatmap and the
quality gate's embedding are those of the network as trained."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import minimize
from sklearn.model_selection import StratifiedGroupKFold

DEFAULT_L2 = 0.1  # on W of standardised features, per film: chosen on test-dev halvings (0.03-0.3 alike)


@dataclass(frozen=True)
class SiteHead:
    """The fitted correction: feature ``mean`` and ``scale`` (d,), ``weights`` (d, C-1), ``bias`` (C-1,)."""

    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray
    bias: np.ndarray

    def apply(self, probs: np.ndarray, embedding: np.ndarray) -> np.ndarray:
        """The corrected probabilities (N, C) of graph probabilities and embeddings (numpy twin of the graph)."""
        corr = ((np.asarray(embedding, np.float64) - self.mean) / self.scale) @ self.weights + self.bias
        z = np.log(np.clip(np.asarray(probs, np.float64), 1e-7, 1.0))
        z[:, 1:] += corr
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def summary(self) -> dict:
        return {"features": int(self.weights.shape[0]), "weight_norm": float(np.linalg.norm(self.weights)),
                "bias": [float(b) for b in self.bias]}


def fit_site_head(probs: np.ndarray, embedding: np.ndarray, y: np.ndarray, l2: float = DEFAULT_L2) -> SiteHead:
    """Fit the correction on films with class indices ``y``: class-balanced cross-entropy plus
    ``l2`` * ||W||^2 (convex; L-BFGS-B with the analytic gradient)."""
    emb = np.asarray(embedding, np.float64)
    y = np.asarray(y)
    n, d = emb.shape
    n_cls = probs.shape[1]
    mean, scale = emb.mean(axis=0), emb.std(axis=0) + 1e-6
    x = (emb - mean) / scale
    logp = np.log(np.clip(np.asarray(probs, np.float64), 1e-7, 1.0))
    counts = np.bincount(y, minlength=n_cls)
    weight = (n / (n_cls * np.maximum(counts, 1)))[y]
    onehot = np.eye(n_cls)[y]
    k = d * (n_cls - 1)

    def loss_grad(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = theta[:k].reshape(d, n_cls - 1), theta[k:]
        z = logp.copy()
        z[:, 1:] += x @ w + b
        z -= z.max(axis=1, keepdims=True)
        lse = np.log(np.exp(z).sum(axis=1))
        q = np.exp(z - lse[:, None])
        loss = float((weight * (lse - (z * onehot).sum(axis=1))).sum() / n + l2 * (w ** 2).sum())
        g = (weight[:, None] * (q - onehot))[:, 1:] / n
        return loss, np.r_[(x.T @ g + 2 * l2 * w).ravel(), g.sum(axis=0)]

    theta = minimize(loss_grad, np.zeros(k + n_cls - 1), jac=True, method="L-BFGS-B",
                     options={"maxiter": 2000}).x
    return SiteHead(mean, scale, theta[:k].reshape(d, n_cls - 1), theta[k:])


def cross_fitted(probs: np.ndarray, embedding: np.ndarray, y: np.ndarray, strata: np.ndarray, groups: list,
                 l2: float = DEFAULT_L2, folds: int = 5, seed: int = 0) -> np.ndarray:
    """Each film's corrected probabilities from a head fitted without its patient (``folds``
    patient-wise folds, stratified by ``strata``): the scores the operating point and temperature
    are fitted on, so they are not the head's own training scores."""
    out = np.empty_like(np.asarray(probs, np.float64))
    # patients numbered by first appearance: the folds depend on the films' order, not on how the
    # patients happen to be named (a CSV's names, a service's pseudonyms)
    order = {g: i for i, g in enumerate(dict.fromkeys(groups))}
    codes = np.array([order[g] for g in groups])
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    for fit_idx, held in splitter.split(embedding, strata, codes):
        head = fit_site_head(probs[fit_idx], embedding[fit_idx], y[fit_idx], l2)
        out[held] = head.apply(probs[held], embedding[held])
    return out


def _head_prefixes(graph) -> list[str]:
    """The name prefixes (``site1_``, ``site2_``...) of the site heads an ONNX graph carries, in order."""
    return sorted((i.name[: -len("mean")] for i in graph.initializer
                   if i.name.startswith("site") and i.name.endswith("_mean")), key=lambda p: int(p[4:-1]))


def has_site_head(src: str | Path) -> bool:
    """Whether the ONNX graph at ``src`` carries a site head."""
    import onnx

    return bool(_head_prefixes(onnx.load(str(src)).graph))


def network_engine(engine):
    """A copy of ``engine`` (an :class:`~cxrtriage.infer.Engine`) that runs its graph without any
    site head: the network's own probabilities (the same object when there is no head)."""
    import copy

    import onnxruntime as ort

    if not has_site_head(engine.onnx_path):
        return engine
    net = copy.copy(engine)
    net.session = ort.InferenceSession(without_site_head(engine.onnx_path).SerializeToString(),
                                       providers=["CPUExecutionProvider"])
    return net


def without_site_head(src: str | Path):
    """The ONNX model at ``src`` (an ``onnx.ModelProto``) with every site head taken off: ``probs``
    is the network's own again."""
    import onnx

    model = onnx.load(str(src))
    graph = model.graph
    heads = _head_prefixes(graph)
    if not heads:
        return model
    base = heads[0] + "probs_in"  # what the first head took as its input: the network's probabilities
    # a head's nodes each read one of its own tensors; the network's read at most its probabilities
    keep = [n for n in graph.node if not any(i.startswith("site") and i != base for i in n.input)]
    for node in keep:
        node.input[:] = ["probs" if n == base else n for n in node.input]
        node.output[:] = ["probs" if n == base else n for n in node.output]
    del graph.node[:]
    graph.node.extend(keep)
    inits = [i for i in graph.initializer if not i.name.startswith("site")]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    return model


def write_graph_with_head(src, dst: str | Path, head: SiteHead) -> str:
    """Copy the ONNX graph ``src`` (a path or an ``onnx.ModelProto``) to ``dst`` with the head
    after its ``probs`` (which keeps its name); returns the new graph's sha256."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src)) if isinstance(src, (str, Path)) else src
    graph = model.graph
    outputs = {o.name for o in graph.output}
    if not {"probs", "embedding"} <= outputs:
        raise ValueError("the graph has no 'probs' and 'embedding' outputs to put a site head on")
    pre = f"site{len(_head_prefixes(graph)) + 1}_"  # a head already there: this one goes after it
    base = pre + "probs_in"
    for node in graph.node:  # the probabilities so far get another name, inside the graph too
        node.input[:] = [base if n == "probs" else n for n in node.input]
        node.output[:] = [base if n == "probs" else n for n in node.output]
    w = np.concatenate([np.zeros((head.weights.shape[0], 1)), head.weights], axis=1)
    consts = {"mean": head.mean, "inv_scale": 1.0 / head.scale, "w": w, "b": np.r_[0.0, head.bias],
              "eps": np.array(1e-7)}
    graph.initializer.extend(numpy_helper.from_array(np.asarray(v, np.float32), pre + n) for n, v in consts.items())
    steps = [("Sub", ["embedding", "mean"], "centred"), ("Mul", ["centred", "inv_scale"], "x"),
             ("MatMul", ["x", "w"], "xw"), ("Add", ["xw", "b"], "corr"), ("Max", [base, "eps"], "p"),
             ("Log", ["p"], "logp"), ("Add", ["logp", "corr"], "z")]
    graph.node.extend(helper.make_node(op, [i if i in (base, "embedding") else pre + i for i in ins], [pre + o])
                      for op, ins, o in steps)
    graph.node.append(helper.make_node("Softmax", [pre + "z"], ["probs"], axis=1))
    onnx.checker.check_model(model)
    data = model.SerializeToString()
    Path(dst).write_bytes(data)
    return hashlib.sha256(data).hexdigest()
