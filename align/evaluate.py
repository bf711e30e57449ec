"""Evaluation of the reward models on IFLLM-format folders, on people they have not seen.

Protocols (every fitted step — expected reading, fill values, scaling, C — is fitted
inside the training part only; per-user normalisation uses no labels and only the same
user's earlier rows):
- ``grouped``: GroupKFold by worker, 5 folds × 5 seeds (shuffled group assignment);
  ``mean``/``sd`` over the 25 fold accuracies, ``pooled`` = mean over seeds of the
  accuracy of all out-of-fold predictions, ``auc`` likewise.
- ``ungrouped``: the paper's protocol, shuffled 5-fold over rows (a worker's turns on both
  sides of the split), 5 seeds.
- ``holdout``: train on DIR, test on DIR2 (only with ``--holdout``); model choices are
  made on DIR alone.
- ``within_user``: for each user with ≥ 20 labelled rows, a model trained on that user's
  earlier half (in time) and tested on their later half; ``mean`` over users.
  ``within_user_prior`` (extra): the same split, trained on everyone else plus the
  user's earlier half.

Feature sets: ``text`` (columns ``t_*``), ``implicit`` (``i_*``: reading behaviour,
observed-minus-expected reading, per-user centred shares, decision phase) and
``text_implicit`` (both).
"""
import numpy as np

from . import reward
from .examples import Table, _concat_tables, fold_columns, pairwise_table, pointwise_table

# Feature sets. Each is a list of candidate column sets; inside every training fold the
# inner grouped CV picks one candidate (and C), so the choice never sees test workers.
# The text set is the reply's length and layout; the implicit candidates are the
# attention indices of examples.INDICES. ``text_implicit`` is one fixed set, text plus
# the attention and user-share indices: on the development workers (pseudo-holdout
# excluded) choosing among the three index sets inside each fold cost a point against
# that fixed set (0.630 vs 0.641, 5 × 5 grouped), the selection noise of ~350 training
# pairs; the decision and observed − expected indices never helped beside the text.
TEXT = ("t_chars_log", "t_words_log", "t_lines_log", "t_digits_share", "t_numbers",
        "t_list_items", "t_headings", "t_bold", "t_type_token")
TEXT_ALL = ("t_",)
IMPLICIT = (("i_index_attention", "i_index_user_share"),
            ("i_index_attention", "i_index_user_share", "i_index_decision"),
            ("i_index_attention", "i_index_user_share", "i_index_decision", "i_index_expected"))
# Columns only some tables have, added to every set that reads behaviour: the time to the
# next message (pointwise tables), and what the user did with a reply besides reading it
# (scroll depth, selection, copy, stop: examples._activity_columns), which only the app
# logs — the study's rows lack them, so on the study alone these sets are unchanged.
LIVE_EXTRA = ("i_next_message_log_s", "i_d_next_message_log_s", "i_act_d_")
FEATURE_SETS = {
    "text": (TEXT, TEXT_ALL),
    "implicit": IMPLICIT,
    "text_implicit": (TEXT + IMPLICIT[0],),
    # ablation only (docs/reward-model.md)
    "text_implicit_chosen": tuple(TEXT + c for c in IMPLICIT),
    "implicit_raw": (("i_d_", "i_share_", "i_decision_"),),
    "implicit_all": (("i_d_", "i_share_", "i_decision_", "i_resid_", "i_user_", "i_index_"),),
    "text_implicit_all": (("t_", "i_d_", "i_share_", "i_decision_", "i_resid_", "i_user_", "i_index_"),),
}
REPORTED = ("text", "implicit", "text_implicit")
MIN_WITHIN_USER = 20


def set_columns(names: list[str], wanted) -> list[int]:
    """Columns named in ``wanted``: exact names, or every name starting with an entry that
    ends in '_'. Names that do not exist are skipped (a pointwise table has no decision
    columns, a pairwise table no next-message column)."""
    exact = [w for w in wanted if not w.endswith("_")]
    prefixes = tuple(w for w in wanted if w.endswith("_"))
    chosen = [names.index(w) for w in exact if w in names]
    if prefixes:
        chosen += [i for i, n in enumerate(names) if n.startswith(prefixes) and i not in chosen]
    return chosen


def candidates(names: list[str], feature_set: str) -> list[list[int]]:
    out = []
    for wanted in FEATURE_SETS[feature_set]:
        if feature_set != "text":
            wanted = tuple(wanted) + LIVE_EXTRA
        columns = set_columns(names, wanted)
        if columns and columns not in out:
            out.append(columns)
    return out


def full_matrix(table: Table, train_rows) -> tuple[np.ndarray, list[str]]:
    extra, extra_names, _ = fold_columns(table, train_rows)
    return np.column_stack([table.X, extra]), table.names + extra_names


def fit_predict(table: Table, train_rows, test_rows, feature_set: str, symmetric: bool,
                seed: int = 0, grouped_inner: bool = True, task: str = "pairwise",
                user_weight_power: float = reward.USER_WEIGHT_POWER):
    """Fit on ``train_rows`` (all fitted steps inside) and return P(1) for ``test_rows``
    and the fitted model."""
    X, names = full_matrix(table, train_rows)
    groups = table.groups[train_rows] if grouped_inner else np.arange(len(train_rows))
    training = table.subset(train_rows)
    model, columns = reward.fit(X[train_rows], table.y[train_rows], groups, symmetric, names=names,
                                task=task, seed=seed, candidates=candidates(names, feature_set),
                                user_weight_power=user_weight_power,
                                matrix_for=lambda rows: full_matrix(training, rows)[0])
    return model.predict_proba(X[test_rows][:, columns]), model


def _correct(y, p) -> np.ndarray:
    """1 for a right call, 0 for a wrong one, ½ for p exactly 0.5 (no call: a tie
    counted as either side would score that side's base rate)."""
    p = np.asarray(p, dtype=float)
    return np.where(p == 0.5, 0.5, ((p > 0.5) == (np.asarray(y) == 1)).astype(float))


def _accuracy(y, p) -> float:
    return float(np.mean(_correct(y, p))) if len(y) else float("nan")


def _auc(y, p) -> float:
    from sklearn.metrics import roc_auc_score
    return float(roc_auc_score(y, p)) if len(np.unique(y)) == 2 else float("nan")


def cross_validate(table: Table, feature_set: str, symmetric: bool, grouped: bool,
                   seeds: int = 5, folds: int = 5,
                   user_weight_power: float = reward.USER_WEIGHT_POWER) -> dict:
    from sklearn.model_selection import GroupKFold, KFold

    fold_acc, pooled_acc, pooled_auc, oof_all = [], [], [], []
    for seed in range(seeds):
        if grouped:
            splitter = GroupKFold(n_splits=folds, shuffle=True, random_state=seed)
            splits = splitter.split(table.X, table.y, table.groups)
        else:
            splits = KFold(n_splits=folds, shuffle=True, random_state=seed).split(table.X)
        oof = np.full(len(table.y), np.nan)
        for train, test in splits:
            p, _ = fit_predict(table, train, test, feature_set, symmetric, seed=seed,
                               grouped_inner=grouped, user_weight_power=user_weight_power)
            oof[test] = p
            fold_acc.append(_accuracy(table.y[test], p))
        pooled_acc.append(_accuracy(table.y, oof))
        pooled_auc.append(_auc(table.y, oof))
        oof_all.append(oof)
    return {"mean": float(np.mean(fold_acc)), "sd": float(np.std(fold_acc, ddof=1)),
            "pooled": float(np.mean(pooled_acc)), "auc": float(np.nanmean(pooled_auc)),
            "folds": len(fold_acc), "_fold_acc": fold_acc, "_oof": np.mean(oof_all, axis=0)}


def unseen(table: Table, other: Table) -> Table:
    """``other`` without the rows of people who are also in ``table``: a holdout is only a
    holdout on people the model never trained on."""
    return other.subset(np.flatnonzero(~np.isin(other.groups, np.unique(table.groups))))


def holdout(table: Table, other: Table, feature_set: str, symmetric: bool) -> dict:
    both = _concat_tables(table, other)
    train = np.arange(len(table.y))
    test = np.arange(len(table.y), len(both.y))
    p, _ = fit_predict(both, train, test, feature_set, symmetric)
    return {"mean": _accuracy(other.y, p), "auc": _auc(other.y, p), "rows": int(len(test)),
            "_p": p}


def within_user(table: Table, feature_set: str, symmetric: bool, with_prior: bool) -> dict:
    scores = []
    for user in np.unique(table.groups):
        rows = np.flatnonzero(table.groups == user)
        if len(rows) < MIN_WITHIN_USER:
            continue
        rows = rows[np.argsort(table.order[rows], kind="stable")]
        half = len(rows) // 2
        earlier, later = rows[:half], rows[half:]
        train = np.concatenate([np.flatnonzero(table.groups != user), earlier]) if with_prior else earlier
        if len(np.unique(table.y[train])) < 2:
            p = np.full(len(later), float(np.mean(table.y[train])))
        else:
            p, _ = fit_predict(table, train, later, feature_set, symmetric,
                               grouped_inner=with_prior)
        scores.append(_accuracy(table.y[later], p))
    return {"mean": float(np.mean(scores)) if scores else float("nan"), "users": len(scores),
            "sd": float(np.std(scores, ddof=1)) if len(scores) > 1 else float("nan")}


def evaluate_task(table: Table, other: Table | None, symmetric: bool, seeds: int = 5,
                  folds: int = 5, sets=REPORTED, progress=None) -> dict:
    out = {}
    for feature_set in sets:
        entry = {}
        for name, grouped in (("grouped", True), ("ungrouped", False)):
            entry[name] = cross_validate(table, feature_set, symmetric, grouped, seeds, folds)
            if progress:
                progress(f"{feature_set} {name}: {entry[name]['mean']:.3f}")
        if other is not None and len(other.y):
            entry["holdout"] = holdout(table, other, feature_set, symmetric)
        entry["within_user"] = within_user(table, feature_set, symmetric, with_prior=False)
        entry["within_user_prior"] = within_user(table, feature_set, symmetric, with_prior=True)
        out[feature_set] = entry
    if "text" in out:  # paired comparison on the very same folds
        for feature_set in out:
            if feature_set == "text":
                continue
            diff = np.subtract(out[feature_set]["grouped"]["_fold_acc"], out["text"]["grouped"]["_fold_acc"])
            out[feature_set]["grouped"]["vs_text"] = {
                "diff": float(diff.mean()), "sd": float(diff.std(ddof=1)),
                "folds_better": int(np.sum(diff > 0)), "folds_worse": int(np.sum(diff < 0)),
                **paired_worker_bootstrap(table.y, table.groups, out[feature_set]["grouped"]["_oof"],
                                          out["text"]["grouped"]["_oof"])}
    return out


def paired_worker_bootstrap(y, groups, p_model, p_text, draws: int = 2000, seed: int = 0) -> dict:
    """Paired test of a model against text on the same out-of-fold predictions (mean over
    seeds): the difference in pooled accuracy, its 95 % interval over workers resampled
    with replacement, and the share of resamples where the model is not better. Folds
    share training rows, so a t-test over folds would overstate the evidence; workers
    are the independent units here."""
    y = np.asarray(y)
    gain = _correct(y, p_model) - _correct(y, p_text)
    users, inverse = np.unique(np.asarray(groups), return_inverse=True)
    gain_sum = np.bincount(inverse, weights=gain, minlength=len(users))
    rows = np.bincount(inverse, minlength=len(users)).astype(float)
    rng = np.random.default_rng(seed)
    chosen = rng.integers(0, len(users), size=(draws, len(users)))
    boot = gain_sum[chosen].sum(axis=1) / rows[chosen].sum(axis=1)
    low, high = np.percentile(boot, [2.5, 97.5])
    return {"pooled_diff": float(gain.mean()), "ci95_workers": [float(low), float(high)],
            "p_not_better": float(np.mean(boot <= 0))}


def evaluate(data_dir, holdout_dir=None, seeds: int = 5, folds: int = 5, progress=None) -> dict:
    """Everything ``align reward evaluate --json`` prints (keys: ../shared/BENCH.md)."""
    from .ifllm import read_ifllm

    if folds < 2 or seeds < 1:
        raise ValueError(f"--folds must be at least 2 and --seeds at least 1 (got {folds}, {seeds})")
    data = read_ifllm(data_dir)
    other = read_ifllm(holdout_dir) if holdout_dir else None   # both checked before any fit
    pair = pairwise_table(data.pairwise_turns())
    point = pointwise_table(data.pointwise_pairs())
    workers = len(np.unique(pair.groups))
    if workers < folds or len(np.unique(pair.y)) < 2:
        raise ValueError(f"{data_dir} has {len(pair.y)} labelled side-by-side pairs from {workers} "
                         f"workers: folds grouped by worker need both choices and at least "
                         f"{folds} workers (--folds)")
    # A worker in both folders would be tested on what they trained: their rows leave the
    # holdout (and are counted below).
    pair_other = unseen(pair, pairwise_table(other.pairwise_turns())) if other else None
    point_other = unseen(point, pointwise_table(other.pointwise_pairs())) if other else None
    result = {"pairs": int(len(pair.y)), "workers": workers}
    def said_of(task):    # which task a progress line is about ("text grouped" came twice)
        return (lambda message: progress(f"{task}: {message}")) if progress else None
    result.update(public(evaluate_task(pair, pair_other, True, seeds, folds,
                                       progress=said_of("pairwise"))))
    point_workers = len(np.unique(point.groups))
    if point_workers >= folds and len(np.unique(point.y)) == 2:
        point_result = public(evaluate_task(point, point_other, False, seeds, folds,
                                            progress=said_of("pointwise")))
    else:
        point_result = {"skipped": f"{len(point.y)} labelled pointwise turns from {point_workers} "
                                   f"workers: too few for {folds} grouped folds"}
    point_result["rows"] = int(len(point.y))
    point_result["majority"] = float(max(point.y.mean(), 1 - point.y.mean())) if len(point.y) else None
    result["pointwise"] = point_result
    if other is not None:
        result["holdout_pairs"] = int(len(pair_other.y))
        # A holdout is only a holdout if none of its people trained the model.
        result["holdout_shared_workers"] = len(set(data.workers()) & set(other.workers()))
        if result["holdout_shared_workers"]:
            result["holdout_note"] = ("workers in both folders were left out of the holdout "
                                      "figures")
        result["pointwise"]["holdout_rows"] = int(len(point_other.y))
        if len(point_other.y):      # the holdout's own base rate, called with DIR's majority
            called = float(point.y.mean() >= 0.5)
            result["pointwise"]["holdout_majority"] = float(np.mean(point_other.y == called))
    return result


def public(result):
    """Drop private arrays (keys starting with '_') and round for printing."""
    if isinstance(result, dict):
        return {k: public(v) for k, v in result.items() if not k.startswith("_")}
    if isinstance(result, list):
        return [public(v) for v in result]
    if isinstance(result, float):
        return round(result, 4) if result == result else None
    return result
