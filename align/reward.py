"""Small on-device reward models: pairwise P(a ≻ b) and pointwise satisfaction.

Training (this module, with scikit-learn) and scoring (:class:`RewardModel`, numpy only)
are separate on purpose: the app loads a model file and scores every shown reply without
importing scikit-learn.

The model is a logistic regression on standardised columns:
- missing values are filled with the training mean of the column (0 for the pairwise
  task, whose columns are antisymmetric differences);
- the pairwise model is *symmetric*: each training pair is also seen swapped (columns
  negated, label flipped) and there is no intercept, so P(a ≻ b) = 1 − P(b ≻ a) and no
  side is favoured;
- the regularisation strength C is chosen by cross-validation *grouped by user* inside
  the training data it is given (nested when called inside an evaluation fold);
- each user's rows weigh 1/√(their count) in the fit (:func:`user_weights`): the model
  is for people it has not seen, and in the study one worker gave 124 of 443 pairs, so
  unweighted that worker's habits set the direction for everyone. √ rather than 1/count
  keeps some credit for users who answered more (measured on the development workers
  only, docs/reward-model.md).

Model files are JSON: format version, task, feature names, fill values, centre, scale,
coefficients, intercept, the expected-reading models used for the fold-level columns,
training metrics and provenance. Probabilities from a logistic model on this little
data are close to calibrated (see docs/reward-model.md for the reliability plot); no
post-hoc calibration is applied, so none can leak across folds.
"""
import json
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FORMAT = "glance-reward"
FORMAT_VERSION = 1
C_GRID = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
USER_WEIGHT_POWER = 0.5


# --- scoring (numpy only) ----------------------------------------------------------------
@dataclass
class RewardModel:
    task: str                       # "pairwise" | "pointwise"
    names: list[str]
    fill: np.ndarray
    centre: np.ndarray
    scale: np.ndarray
    coef: np.ndarray                # on standardised columns
    intercept: float
    expected_reading: dict = field(default_factory=dict)   # column -> ridge parameters
    metrics: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)

    def _standardise(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        X = np.where(np.isnan(X), self.fill, X)
        return (X - self.centre) / self.scale

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """P(label 1) for each row of X (columns in ``self.names`` order)."""
        z = self._standardise(np.atleast_2d(X)) @ self.coef + self.intercept
        return 1.0 / (1.0 + np.exp(-np.clip(z, -40, 40)))

    def score(self, features: dict, top: int = 5) -> tuple[float, list[tuple[str, float]]]:
        """Probability and the ``top`` features that moved it most (signed contributions
        to the log-odds, relative to a reply with average features). Unknown or missing
        features count as average."""
        x = np.array([features.get(n, np.nan) for n in self.names], dtype=np.float64)
        z = self._standardise(x[None, :])[0]
        contributions = z * self.coef
        probability = float(1.0 / (1.0 + math.exp(-float(np.clip(contributions.sum() + self.intercept, -40, 40)))))
        order = np.argsort(-np.abs(contributions))[:top]
        return probability, [(self.names[i], float(contributions[i])) for i in order if contributions[i] != 0]

    # --- files ---------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "task": self.task,
                "names": list(self.names), "fill": self.fill.tolist(), "centre": self.centre.tolist(),
                "scale": self.scale.tolist(), "coef": self.coef.tolist(), "intercept": self.intercept,
                "expected_reading": self.expected_reading, "metrics": self.metrics, "info": self.info}

    def save(self, path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1, allow_nan=True))
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path) -> "RewardModel":
        data = json.loads(Path(path).read_text())
        if data.get("format") != FORMAT:
            raise ValueError(f"{path} is not a Glance reward model")
        if data.get("format_version", 0) > FORMAT_VERSION:
            raise ValueError(f"{path} was written by a newer Glance (format "
                             f"{data['format_version']} > {FORMAT_VERSION})")
        model = cls(task=data["task"], names=data["names"], fill=np.array(data["fill"], float),
                    centre=np.array(data["centre"], float), scale=np.array(data["scale"], float),
                    coef=np.array(data["coef"], float), intercept=float(data["intercept"]),
                    expected_reading=data.get("expected_reading", {}),
                    metrics=data.get("metrics", {}), info=data.get("info", {}))
        # Refused here, not at every reply it would fail to score: the app then takes the
        # newest model file that is whole (and `glance doctor` names the file it skipped).
        if not all(isinstance(part, dict) for part in
                   (model.expected_reading, model.metrics, model.info)):
            raise ValueError(f"{path} is damaged: its expected_reading, metrics or info is "
                             "not a table of values")
        if not all(part.shape == (len(model.names),)
                   for part in (model.fill, model.centre, model.scale, model.coef)):
            raise ValueError(f"{path} is damaged: its parts do not match its {len(model.names)} columns")
        return model


# --- training (scikit-learn, imported lazily) ---------------------------------------------
def user_weights(groups, power: float = USER_WEIGHT_POWER) -> np.ndarray:
    """Weight of each row: 1 / (rows of its user) ** power (0 weighs every row the same),
    scaled to mean 1."""
    groups = np.asarray(groups)
    if not len(groups):
        return np.ones(0)
    _, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    weights = counts[inverse].astype(float) ** -power
    return weights / weights.mean()


def _augment(X: np.ndarray, y: np.ndarray, symmetric: bool):
    if not symmetric:
        return X, y
    return np.vstack([X, -X]), np.concatenate([y, 1 - y])


def fit_fixed(X: np.ndarray, y: np.ndarray, C: float, symmetric: bool, names=None,
              task: str = "pairwise", weights=None) -> RewardModel:
    """Fit one logistic regression with a given C (rows weighted by ``weights``, default
    equal) and return it as a RewardModel."""
    from sklearn.linear_model import LogisticRegression

    X = np.asarray(X, dtype=np.float64)
    Xa, ya = _augment(X, np.asarray(y), symmetric)
    weights = np.ones(len(X)) if weights is None else np.asarray(weights, float)
    weights_a = np.concatenate([weights, weights]) if symmetric else weights
    if symmetric or not len(Xa):
        fill = np.zeros(X.shape[1])
    else:
        with np.errstate(all="ignore"):
            known = ~np.isnan(Xa)
            fill = np.where(known.any(axis=0), np.nansum(Xa, axis=0) / np.maximum(known.sum(axis=0), 1), 0.0)
    Xf = np.where(np.isnan(Xa), fill, Xa)
    centre = np.zeros(X.shape[1]) if symmetric else Xf.mean(axis=0)
    # A column's spread is measured on the rows that have it: the app's activity columns
    # exist for the user's rows only, and measured over the study's filled rows too their
    # spread would look tiny, so a unit of their coefficient would cost the penalty far
    # less than any other column's.
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)   # an all-missing column: scale 1
        scale = np.nanstd(Xa, axis=0) if not symmetric else np.sqrt(np.nanmean(Xa ** 2, axis=0))
    scale = np.where(np.isfinite(scale) & (scale > 1e-12), scale, 1.0)
    Z = (Xf - centre) / scale
    if len(np.unique(ya)) < 2:
        coef, intercept = np.zeros(X.shape[1]), _logit(float(np.mean(ya)) if len(ya) else 0.5)
    else:
        model = LogisticRegression(C=C, fit_intercept=not symmetric, max_iter=5000)
        model.fit(Z, ya, sample_weight=weights_a)
        coef, intercept = model.coef_[0], float(model.intercept_[0]) if not symmetric else 0.0
    return RewardModel(task=task, names=list(names or [f"x{i}" for i in range(X.shape[1])]),
                       fill=fill, centre=centre, scale=scale, coef=np.asarray(coef, float),
                       intercept=intercept, info={"C": C})


def _logit(p: float) -> float:
    p = min(max(p, 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))


def _inner_splits(y, groups, seed: int, folds: int):
    from sklearn.model_selection import GroupKFold, KFold

    if len(np.unique(groups)) >= folds:
        return list(GroupKFold(n_splits=folds, shuffle=True, random_state=seed).split(y, y, groups))
    if len(y) >= 2 * folds:
        return list(KFold(n_splits=folds, shuffle=True, random_state=seed).split(y))
    return []


def choose(X, y, groups, symmetric: bool, candidates=None, seed: int = 0, folds: int = 3,
           grid=C_GRID, weights=None, matrix_for=None) -> tuple[int, float]:
    """The column candidate and C with the best mean held-out log-likelihood in an inner
    cross-validation grouped by user (plain K-fold when there are too few users).
    ``candidates`` is a list of column-index lists (default: all columns); ``weights``
    the rows' weights in the fits (default :func:`user_weights`). ``matrix_for(rows)``,
    when given, makes the matrix again with what is fitted without labels (expected
    reading, index scales) fitted on ``rows`` only, for each inner split: fitted once on
    all of X, an inner split's validation users had a hand in its training columns."""
    X, y, groups = np.asarray(X, float), np.asarray(y), np.asarray(groups)
    candidates = candidates or [list(range(X.shape[1]))]
    weights = user_weights(groups) if weights is None else np.asarray(weights, float)
    splits = _inner_splits(y, groups, seed, folds)
    if not splits:
        return 0, 0.1
    matrices = [X if matrix_for is None else np.asarray(matrix_for(train), float)
                for train, _ in splits]
    best, best_score = (0, grid[0]), -np.inf
    for k, columns in enumerate(candidates):
        for C in grid:
            scores = []
            for (train, test), Xs in zip(splits, matrices):
                if len(np.unique(y[train])) < 2:
                    continue
                model = fit_fixed(Xs[train][:, columns], y[train], C, symmetric,
                                  weights=weights[train])
                p = np.clip(model.predict_proba(Xs[test][:, columns]), 1e-6, 1 - 1e-6)
                scores.append(np.mean(y[test] * np.log(p) + (1 - y[test]) * np.log(1 - p)))
            if scores and np.mean(scores) > best_score:
                best, best_score = (k, C), float(np.mean(scores))
    return best


def fit(X, y, groups, symmetric: bool, names=None, task: str = "pairwise", seed: int = 0,
        candidates=None, user_weight_power: float = USER_WEIGHT_POWER,
        matrix_for=None) -> tuple[RewardModel, list[int]]:
    """Choose the columns (among ``candidates``) and C by grouped inner CV on (X, y), then
    fit on all of it. Returns the model (over the chosen columns) and those columns.
    ``matrix_for``: see :func:`choose`."""
    names = list(names or [f"x{i}" for i in range(np.asarray(X).shape[1])])
    candidates = candidates or [list(range(len(names)))]
    weights = user_weights(groups, user_weight_power)
    k, C = choose(X, y, groups, symmetric, candidates, seed=seed, weights=weights,
                  matrix_for=matrix_for)
    columns = list(candidates[k])
    model = fit_fixed(np.asarray(X, float)[:, columns], y, C, symmetric,
                      names=[names[i] for i in columns], task=task, weights=weights)
    model.info.update(candidate=k, user_weight_power=user_weight_power)
    return model, columns


def describe(model: RewardModel, **info) -> RewardModel:
    model.info.update({"trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **info})
    return model
