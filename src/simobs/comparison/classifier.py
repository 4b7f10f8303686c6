"""Probabilistic classifiers from embedding to simulation model.

Two backends behind one interface (:class:`SimulationClassifier`):

* ``xgboost`` (default, as in Zhou et al. 2025): gradient-boosted trees, softmax
  objective, early stopping on the validation split; feature attributions are exact
  TreeSHAP values from XGBoost's built-in ``pred_contribs``.
* ``mlp``: a small torch network head; attributions by integrated gradients from the
  training mean (an approximation of Shapley values that also sums to the logit change).

Both are trained with balanced class weights (see :mod:`simobs.comparison.splits`) so
that the softmax output is the posterior model probability under equal priors.  A
scalar temperature (see :mod:`simobs.comparison.calibration`) is stored with the model
and applied by :meth:`SimulationClassifier.logits`.

Lineage (:mod:`simobs.provenance`): the file records ``extra.vae_digest``, the
``vae_digest`` of the embeddings the classifier trained on, and ``digest``, the SHA-256
of its own content (everything but that field), which :func:`load_classifier`
recomputes: the stages that score embeddings with it check the first and record the
second.

Shapes: X is (N, D) embeddings, logits (N, K), attributions (N, K, D).
"""

from __future__ import annotations

import base64
import io
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.special import softmax
from torch import nn

from simobs.devices import resolve_device

__all__ = ["ClassifierSettings", "SimulationClassifier", "classifier_from_document", "fit_classifier", "load_classifier"]

log = logging.getLogger(__name__)


@dataclass
class ClassifierSettings:
    """Hyper-parameters of both backends (config section ``classifier``; unknown keys are errors)."""

    backend: str = "xgboost"
    # xgboost
    n_estimators: int = 500
    max_depth: int = 6
    learning_rate: float = 0.1
    subsample: float = 0.8
    colsample_bytree: float = 0.8
    min_child_weight: float = 1.0
    reg_lambda: float = 1.0
    early_stopping_rounds: int = 30
    n_threads: int = 0  # 0: all cores the job was given
    device: str = "cpu"  # xgboost "cpu"/"cuda"; mlp "cpu"/"cuda"/"auto"
    # mlp
    hidden: list[int] = field(default_factory=lambda: [128, 128])
    dropout: float = 0.1
    lr: float = 1e-3
    weight_decay: float = 1e-4
    epochs: int = 200
    batch_size: int = 512
    patience: int = 20
    ig_steps: int = 32

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> "ClassifierSettings":
        """Build from a config mapping; keys not known here raise with the list of valid ones."""
        values = dict(values or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown classifier setting(s) {unknown}; valid keys: {sorted(known)}")
        s = cls(**values)
        if s.backend not in ("xgboost", "mlp"):
            raise ValueError(f"classifier.backend={s.backend!r}; choose 'xgboost' or 'mlp'")
        return s


class SimulationClassifier:
    """A trained classifier with its class names and calibration temperature."""

    def __init__(self, backend: str, class_names: list[str], n_features: int, model: Any,
                 temperature: float = 1.0, extra: dict[str, Any] | None = None) -> None:
        self.backend = backend
        self.class_names = list(class_names)
        self.n_features = int(n_features)
        self.model = model
        self.temperature = float(temperature)
        self.extra = dict(extra or {})
        #: SHA-256 of the saved file's content; set by :meth:`save` and :func:`load_classifier`.
        self.digest: str | None = None

    @property
    def vae_digest(self) -> str | None:
        """``vae_digest`` of the embeddings it trained on (``None``: unknown, an older file)."""
        return self.extra.get("vae_digest")

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def _check_x(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ValueError(f"classifier expects (N, {self.n_features}) embeddings, got {x.shape}; were these "
                             "embeddings produced by the same embedding model?")
        return x

    def raw_logits(self, x: np.ndarray, batch_size: int = 65536) -> np.ndarray:
        """Uncalibrated logits (N, K), computed in batches so that 600k galaxies fit in memory."""
        x = self._check_x(x)
        out = np.empty((len(x), self.n_classes), dtype=np.float64)
        for s in range(0, len(x), batch_size):
            out[s:s + batch_size] = self._raw_logits(x[s:s + batch_size])
        return out

    def _raw_logits(self, x: np.ndarray) -> np.ndarray:
        if self.backend == "xgboost":
            import xgboost as xgb

            return self.model.predict(xgb.DMatrix(x), output_margin=True).reshape(len(x), self.n_classes)
        dev = next(self.model.parameters()).device
        with torch.no_grad():
            return self.model(torch.from_numpy(x).to(dev)).double().cpu().numpy()

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Calibrated logits (N, K): raw logits divided by the stored temperature."""
        return self.raw_logits(x) / self.temperature

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Calibrated posterior model probabilities under equal priors (N, K)."""
        return softmax(self.logits(x), axis=1)

    def feature_attributions(self, x: np.ndarray, batch_size: int = 4096) -> np.ndarray:
        """Per-feature contributions to each model's raw logit, (N, K, D).

        XGBoost: exact TreeSHAP (``pred_contribs``), bias column dropped.  MLP: integrated
        gradients from the training-mean embedding.  Divide by the temperature for
        contributions to the calibrated logit (a common scale that does not change ranks).
        """
        x = self._check_x(x)
        out = np.empty((len(x), self.n_classes, self.n_features), dtype=np.float32)
        for s in range(0, len(x), batch_size):
            xb = x[s:s + batch_size]
            if self.backend == "xgboost":
                import xgboost as xgb

                c = self.model.predict(xgb.DMatrix(xb), pred_contribs=True)
                out[s:s + len(xb)] = c.reshape(len(xb), self.n_classes, self.n_features + 1)[..., :-1]
            else:
                out[s:s + len(xb)] = self._integrated_gradients(xb)
        return out

    def _integrated_gradients(self, x: np.ndarray) -> np.ndarray:
        steps = int(self.extra.get("ig_steps", 32))
        dev = next(self.model.parameters()).device
        base = torch.as_tensor(np.asarray(self.extra["feature_mean"], dtype=np.float32), device=dev)
        xt = torch.from_numpy(x).to(dev)
        alphas = (torch.arange(steps, device=dev, dtype=torch.float32) + 0.5) / steps  # midpoint rule
        grads = torch.zeros(len(x), self.n_classes, self.n_features, device=dev)
        for a in alphas:
            pts = (base + a * (xt - base)).requires_grad_(True)
            out = self.model(pts)
            for k in range(self.n_classes):
                (g,) = torch.autograd.grad(out[:, k].sum(), pts, retain_graph=k < self.n_classes - 1)
                grads[:, k] += g
        return ((xt - base)[:, None, :] * grads / steps).detach().cpu().numpy()

    # -- persistence -----------------------------------------------------------------
    def to_document(self) -> dict[str, Any]:
        """The classifier as one JSON-serialisable document (metadata + base64 model
        payload) with its content ``digest`` (also set as :attr:`digest`)."""
        if self.backend == "xgboost":
            payload = bytes(self.model.save_raw(raw_format="ubj"))
            arch = None
        else:
            buf = io.BytesIO()
            torch.save({k: v.cpu() for k, v in self.model.state_dict().items()}, buf)
            payload = buf.getvalue()
            arch = self.extra["architecture"]
        doc = {"format": "simobs-classifier/1", "backend": self.backend, "class_names": self.class_names,
               "n_features": self.n_features, "temperature": self.temperature,
               "extra": {k: v for k, v in self.extra.items() if k != "architecture"}, "architecture": arch,
               "model": base64.b64encode(payload).decode("ascii")}
        doc["digest"] = self.digest = _content_digest(doc)
        return doc

    def save(self, path: str | Path) -> str:
        """Write one self-describing JSON file (:meth:`to_document`), atomically.

        Returns:
            The file's ``digest`` (also set as :attr:`digest`).
        """
        from simobs.io import atomic_path

        doc = self.to_document()
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(doc))
        return self.digest


def _content_digest(doc: Mapping[str, Any]) -> str:
    """SHA-256 of a classifier document without its ``digest`` field, in canonical JSON."""
    from simobs.io import content_digest

    return content_digest({k: v for k, v in doc.items() if k != "digest"})


def load_classifier(path: str | Path, device: str = "cpu") -> SimulationClassifier:
    """Read a classifier written by :meth:`SimulationClassifier.save`.

    Its :attr:`~SimulationClassifier.digest` is recomputed from the content (also for
    files written before the digest was stored).

    Raises:
        ValueError: if the file is not a classifier, or its content does not match the
            digest stored at save time (it was altered).
    """
    return classifier_from_document(json.loads(Path(path).read_text()), str(path), device)


def classifier_from_document(doc: Mapping[str, Any], where: str, device: str = "cpu",
                             writer: str = "train_classifier") -> SimulationClassifier:
    """The classifier of a :meth:`SimulationClassifier.to_document` document; ``where``
    names it in errors (a file, or a file and an entry), ``writer`` the rule to rerun."""
    if doc.get("format") != "simobs-classifier/1":
        raise ValueError(f"{where}: not a simobs classifier (format={doc.get('format')!r}); "
                         f"rerun rule `{writer}`")
    digest = _content_digest(doc)
    if doc.get("digest") not in (None, digest):
        raise ValueError(f"{where}: its content has digest {digest} but it was saved with {doc['digest']}; it was "
                         f"altered after {writer} wrote it: rerun rule `{writer}`")
    payload = base64.b64decode(doc["model"])
    extra = dict(doc.get("extra") or {})
    if doc["backend"] == "xgboost":
        import xgboost as xgb

        model = xgb.Booster()
        model.load_model(bytearray(payload))
    else:
        arch = doc["architecture"]
        extra["architecture"] = arch
        model = _mlp(arch["n_features"], arch["hidden"], arch["n_classes"], arch["dropout"])
        model.load_state_dict(torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True))
        model.to(resolve_device(device)).eval()
    clf = SimulationClassifier(doc["backend"], doc["class_names"], doc["n_features"], model,
                               doc["temperature"], extra)
    clf.digest = digest
    return clf


# -- training ---------------------------------------------------------------------------
def fit_classifier(
    x_train: np.ndarray, y_train: np.ndarray, w_train: np.ndarray,
    x_val: np.ndarray, y_val: np.ndarray, w_val: np.ndarray,
    class_names: list[str], settings: ClassifierSettings, seed: int = 0,
    on_epoch: Callable[[dict[str, float], int], None] | None = None,
) -> SimulationClassifier:
    """Train the configured backend with early stopping on the (weighted) validation loss.

    Args:
        x_train, y_train, w_train: (N, D) embeddings, (N,) labels, (N,) sample weights.
        x_val, y_val, w_val: the validation split, same layout.
        class_names: K model names; labels index into it.
        settings: hyper-parameters.
        seed: seed of the backend's randomness (row/column subsampling, init, batches).
        on_epoch: optional callback ``(metrics, step)`` (e.g. ``JobRun.log_metrics``).
    """
    if settings.backend == "xgboost":
        return _fit_xgboost(x_train, y_train, w_train, x_val, y_val, w_val, class_names, settings, seed, on_epoch)
    return _fit_mlp(x_train, y_train, w_train, x_val, y_val, w_val, class_names, settings, seed, on_epoch)


def _fit_xgboost(x_train, y_train, w_train, x_val, y_val, w_val, class_names, s, seed, on_epoch):
    import xgboost as xgb

    k = len(class_names)
    dtrain = xgb.DMatrix(np.asarray(x_train, np.float32), label=y_train, weight=w_train)
    dval = xgb.DMatrix(np.asarray(x_val, np.float32), label=y_val, weight=w_val)
    params = {"objective": "multi:softprob", "num_class": k, "eval_metric": "mlogloss", "tree_method": "hist",
              "max_depth": s.max_depth, "eta": s.learning_rate, "subsample": s.subsample,
              "colsample_bytree": s.colsample_bytree, "min_child_weight": s.min_child_weight,
              "lambda": s.reg_lambda, "seed": seed, "device": s.device}
    if s.n_threads > 0:
        params["nthread"] = s.n_threads
    history: dict[str, Any] = {}
    booster = xgb.train(params, dtrain, num_boost_round=s.n_estimators, evals=[(dtrain, "train"), (dval, "validation")],
                        early_stopping_rounds=s.early_stopping_rounds, evals_result=history, verbose_eval=False)
    if on_epoch is not None:
        for i, (a, b) in enumerate(zip(history["train"]["mlogloss"], history["validation"]["mlogloss"])):
            on_epoch({"train_log_loss": float(a), "validation_log_loss": float(b)}, i)
    best = int(getattr(booster, "best_iteration", s.n_estimators - 1))
    booster = booster[: best + 1]  # keep only the trees up to the early-stopping optimum
    log.info("xgboost: %d trees kept (best validation mlogloss at round %d)", best + 1, best)
    return SimulationClassifier("xgboost", class_names, x_train.shape[1], booster, extra={"n_trees": best + 1})


class _Standardise(nn.Module):
    """(x - mean) / std with the training statistics stored as buffers, so that the saved
    network takes raw embeddings."""

    def __init__(self, n_features: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("std", torch.ones(n_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _mlp(n_features: int, hidden: list[int], n_classes: int, dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = [_Standardise(n_features)]
    d = n_features
    for h in hidden:
        layers += [nn.Linear(d, h), nn.GELU(), nn.Dropout(dropout)]
        d = h
    layers.append(nn.Linear(d, n_classes))
    return nn.Sequential(*layers)


def _fit_mlp(x_train, y_train, w_train, x_val, y_val, w_val, class_names, s, seed, on_epoch):
    torch.manual_seed(seed)
    dev = resolve_device(s.device, key="classifier.device")
    k, d = len(class_names), x_train.shape[1]
    model = _mlp(d, list(s.hidden), k, s.dropout)
    model[0].mean.copy_(torch.as_tensor(x_train.mean(axis=0), dtype=torch.float32))
    model[0].std.copy_(torch.as_tensor(x_train.std(axis=0) + 1e-6, dtype=torch.float32))
    model.to(dev)
    arch = {"n_features": d, "hidden": list(s.hidden), "n_classes": k, "dropout": s.dropout}
    opt = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=s.weight_decay)

    def tensors(x, y, w):
        return (torch.as_tensor(np.asarray(x, np.float32), device=dev), torch.as_tensor(np.asarray(y, np.int64), device=dev),
                torch.as_tensor(np.asarray(w, np.float32), device=dev))

    xt, yt, wt = tensors(x_train, y_train, w_train)
    xv, yv, wv = tensors(x_val, y_val, w_val)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    best_loss, best_state, bad = np.inf, None, 0
    for epoch in range(s.epochs):
        model.train()
        perm = torch.randperm(len(xt), generator=gen).to(dev)
        for i in range(0, len(xt), s.batch_size):
            b = perm[i:i + s.batch_size]
            loss = (F.cross_entropy(model(xt[b]), yt[b], reduction="none") * wt[b]).sum() / wt[b].sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            vl = float((F.cross_entropy(model(xv), yv, reduction="none") * wv).sum() / wv.sum())
        if on_epoch is not None:
            on_epoch({"validation_log_loss": vl}, epoch)
        if vl < best_loss - 1e-5:
            best_loss, bad = vl, 0
            best_state = {kk: v.detach().clone() for kk, v in model.state_dict().items()}
        else:
            bad += 1
            if bad >= s.patience:
                break
    model.load_state_dict(best_state)
    model.eval()
    log.info("mlp: stopped after %d epochs, best validation log loss %.4f", epoch + 1, best_loss)
    extra = {"architecture": arch, "feature_mean": np.asarray(x_train.mean(axis=0), np.float64).tolist(),
             "ig_steps": s.ig_steps}
    return SimulationClassifier("mlp", class_names, d, model, extra=extra)
