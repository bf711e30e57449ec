"""`align reward train`: fit the reward models on the data given and save model files.

Today the data is an IFLLM-format folder (the research prior). The user's own consented
traces will come through the store's reading-trace read-back; they are tables of the
same form (``examples.pairwise_table`` / ``pointwise_table``), so this module does not
change when they arrive.
"""
import time
from pathlib import Path

import numpy as np

from . import reward
from .evaluate import candidates
from .examples import Table, fitted_to_dict, fold_columns, pairwise_table, pointwise_table

TASKS = ("pairwise", "pointwise")


def train_table(table: Table, task: str, feature_set: str = "text_implicit", seed: int = 0) -> reward.RewardModel:
    """Fit every step on all of ``table`` (expectation, index scales, columns, C) and
    return a model that scores new examples without scikit-learn."""
    if len(table.y) < 10 or len(np.unique(table.y)) < 2:
        raise ValueError(f"not enough labelled {task} examples to train on ({len(table.y)})")
    rows = np.arange(len(table.y))
    extra, extra_names, fitted = fold_columns(table, rows)
    X = np.column_stack([table.X, extra])
    names = table.names + extra_names
    model, _ = reward.fit(X, table.y, table.groups, symmetric=(task == "pairwise"), names=names,
                          task=task, seed=seed, candidates=candidates(names, feature_set))
    model.expected_reading = fitted_to_dict(fitted)
    p = model.predict_proba(X[:, [names.index(n) for n in model.names]])
    model.metrics = {"train_rows": int(len(table.y)), "train_users": int(len(np.unique(table.groups))),
                     "train_accuracy": float(np.mean((p > 0.5) == (table.y == 1))),
                     "label_rate": float(np.mean(table.y))}
    return reward.describe(model, feature_set=feature_set, seed=seed)


def train_ifllm(directory, out_dir, tasks=TASKS, feature_set: str = "text_implicit") -> dict:
    from .ifllm import read_ifllm

    return train_data(read_ifllm(directory), out_dir, tasks, feature_set, source="ifllm")


def train_data(data, out_dir, tasks=TASKS, feature_set: str = "text_implicit",
               source: str = "ifllm") -> dict:
    out_dir = Path(out_dir)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    written = {}
    for task in tasks:
        table = pairwise_table(data.pairwise_turns()) if task == "pairwise" \
            else pointwise_table(data.pointwise_pairs())
        model = train_table(table, task, feature_set)
        model.info.update({"source": source, "data": str(data.directory), "version": stamp})
        path = model.save(out_dir / f"reward-{task}-{stamp}.json")
        written[task] = {"path": str(path), "columns": len(model.names), **model.metrics,
                         "C": model.info.get("C")}
    return written
