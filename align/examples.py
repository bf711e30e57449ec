"""Labelled examples for the reward models, built from turns with reading traces.

Two tasks:
- **pairwise**: a side-by-side pair, label 1 when reply a (left / response 1) was
  preferred. Every column is antisymmetric (swapping a and b negates it), so the model
  needs no intercept and has no side bias, and training doubles each pair by swapping.
- **pointwise**: a reply compared with the previous reply of the same conversation,
  label 1 when the user said it was better. Columns are "current − previous" (same
  antisymmetric form), plus the time to the next message.

Columns come in three groups, the feature sets of the evaluation: ``text`` (what the
replies say and how they are laid out), ``implicit`` (what the user did while reading)
and the fold-level ones computed by :func:`fold_columns` from the per-side matrices:
observed-minus-expected reading (the expectation is fitted on the training fold) and
per-user running normalisation (each row only relative to the same user's earlier rows).
"""
from dataclasses import dataclass, field

import numpy as np

from feedback_store.trace import GAZE, MOUSE
from . import features as F

# Per-reply reading quantities that are durations or counts: compared on a log scale.
_LOG_KEYS = {"samples", "dwell_ms", "hover_ms", "focused_ms", "first_pass_ms", "regressions",
             "revisits", "skipped_lines", "visits", "line_ms_mean", "path_px", "scroll_moves",
             "first_pass_cps"}
# Reading quantities used per side (observed) by the expected-reading step.
OBSERVED = ("m_dwell_ms", "g_dwell_ms", "m_hover_ms", "g_hover_ms", "g_first_pass_ms",
            "m_first_pass_ms", "g_visits", "m_path_px")
# Text columns the expectation is computed from (length and layout only).
EXPECTATION_TEXT = ("chars_log", "words_log", "lines_log", "paragraphs", "list_items",
                    "headings", "code_blocks", "digits_share", "sentences")
SOURCES = (("m", MOUSE, 0.0), ("g", GAZE, 150.0))


def reply_features(trace, query: str) -> dict[str, float]:
    """Text features and per-source reading features of one shown reply."""
    out = {f"t_{k}": v for k, v in F.text_features(trace.text, query).items()}
    for prefix, source, min_visit in SOURCES:
        for key, value in F.reading_features(trace, source, min_visit_ms=min_visit).items():
            out[f"{prefix}_{key}"] = value
    return out


def _logged(row: dict) -> dict:
    return {k: (F._log1p(v) if k.split("_", 1)[1] in _LOG_KEYS else v) for k, v in row.items()}


@dataclass
class Table:
    X: np.ndarray                       # (n, k) antisymmetric columns
    names: list[str]
    groups: np.ndarray                  # (n,) user ids
    order: np.ndarray                   # (n,) time the pair / reply was shown (epoch ms)
    y: np.ndarray                       # (n,) 0/1
    observed_a: np.ndarray              # (n, len(OBSERVED)) log observed reading of a
    observed_b: np.ndarray
    text_a: np.ndarray                  # (n, len(EXPECTATION_TEXT))
    text_b: np.ndarray
    ids: list = field(default_factory=list)   # query ids, for reports

    def subset(self, rows) -> "Table":
        rows = np.asarray(rows)
        return Table(self.X[rows], self.names, self.groups[rows], self.order[rows], self.y[rows],
                     self.observed_a[rows], self.observed_b[rows], self.text_a[rows],
                     self.text_b[rows], [self.ids[i] for i in rows] if self.ids else [])

    def group_of(self, prefix: str) -> list[int]:
        return [i for i, n in enumerate(self.names) if n.startswith(prefix)]

    def to_json(self) -> dict:
        """Plain lists (NaN kept), for the app to hand the nightly job the user's rows."""
        return {"names": self.names, "ids": [str(i) for i in self.ids],
                **{name: getattr(self, name).tolist() for name in _TABLE_ARRAYS}}

    @classmethod
    def from_json(cls, data: dict) -> "Table":
        if not data["y"]:
            return _table([], {}, [], data["names"])
        arrays = {name: np.asarray(data[name], dtype=dtype) for name, dtype in _TABLE_ARRAYS.items()}
        return cls(names=list(data["names"]), ids=list(data["ids"]), **arrays)


_TABLE_ARRAYS = {"X": float, "groups": object, "order": float, "y": int, "observed_a": float,
                 "observed_b": float, "text_a": float, "text_b": float}


def _side_arrays(rows: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    observed = np.array([[F._log1p(r[k]) for k in OBSERVED] for r in rows], dtype=float)
    text = np.array([[r[f"t_{k}"] for k in EXPECTATION_TEXT] for r in rows], dtype=float)
    return observed, text


def _implicit_pair_columns(fa: dict, fb: dict) -> dict[str, float]:
    """Reading differences and shares between two replies (antisymmetric)."""
    reading_a = {k: v for k, v in fa.items() if not k.startswith("t_")}
    reading_b = {k: v for k, v in fb.items() if not k.startswith("t_")}
    out = {f"i_d_{k}": v for k, v in F.pair_difference(_logged(reading_a), _logged(reading_b)).items()}
    for prefix in ("m", "g"):
        for key in ("dwell_ms", "hover_ms", "first_pass_ms", "visits", "path_px"):
            out[f"i_share_{prefix}_{key}"] = F.share(fa[f"{prefix}_{key}"], fb[f"{prefix}_{key}"])
        # dwell per character: the crudest length control
        la, lb = np.expm1(fa["t_chars_log"]), np.expm1(fb["t_chars_log"])
        out[f"i_share_{prefix}_dwell_per_char"] = F.share(
            fa[f"{prefix}_dwell_ms"] / max(la, 1.0), fb[f"{prefix}_dwell_ms"] / max(lb, 1.0))
    return out


def _text_difference(fa: dict, fb: dict) -> dict[str, float]:
    return {f"t_{k}": v for k, v in F.pair_difference(
        {k[2:]: v for k, v in fa.items() if k.startswith("t_")},
        {k[2:]: v for k, v in fb.items() if k.startswith("t_")}).items()}


def _activity_columns(did_a: dict | None, did_b: dict | None) -> dict[str, float]:
    """What the user did with a minus with b (lines on screen, selection, copy, stop:
    ``features.MODEL_INTERACTIONS``, never thumbs or regenerations), when the app logged
    it; the study did not, so its rows have none of these columns."""
    if did_a is None or did_b is None:
        return {}
    return {f"i_act_d_{k}": did_a[k] - did_b[k] for k in F.MODEL_INTERACTIONS}


def pair_row(pair, query: str, activity: tuple | None = None) -> tuple[dict, dict, dict]:
    """Columns of one side-by-side pair (a ≻ b direction) and the per-side features;
    ``activity``: both sides' ``features.interaction_features`` up to the pick, if logged.
    Reading counts until the pick: the kept reply stays on screen and is read on, and
    that reading (after the choice) would tell the model which side was chosen."""
    fa = reply_features(pair.a.before(pair.pick_t_ms), query)
    fb = reply_features(pair.b.before(pair.pick_t_ms), query)
    row = _text_difference(fa, fb)
    row.update(_implicit_pair_columns(fa, fb))
    row.update(_activity_columns(*(activity or (None, None))))
    for prefix, source, _ in SOURCES:
        for key, value in F.decision_features(pair, source).items():
            if key != "switches":  # symmetric: says nothing about which side
                row[f"i_decision_{prefix}_{key}"] = value
    return row, fa, fb


def followup_row(current, previous, query: str, previous_query: str,
                 current_shown_for_ms: float, previous_shown_for_ms: float,
                 current_did: dict | None = None, previous_did: dict | None = None
                 ) -> tuple[dict, dict, dict]:
    """Columns of a reply compared with the previous reply of its conversation
    (a = current, b = previous), with the time until the next message and, when the app
    logged them, the differences in what the user did with each (``*_did``:
    ``features.interaction_features`` over each reading)."""
    fa = reply_features(current, query)
    fb = reply_features(previous, previous_query)
    row = _text_difference(fa, fb)
    row.update(_implicit_pair_columns(fa, fb))
    row.update(_activity_columns(current_did, previous_did))
    row["i_next_message_log_s"] = F._log1p(current_shown_for_ms / 1000.0)
    row["i_d_next_message_log_s"] = (F._log1p(current_shown_for_ms / 1000.0)
                                     - F._log1p(previous_shown_for_ms / 1000.0))
    return row, fa, fb


def pairwise_table(turns) -> Table:
    """One row per labelled side-by-side pair."""
    rows, per_side, meta = [], {"a": [], "b": []}, []
    for turn in turns:
        if turn.pair_label is None:
            continue
        row, fa, fb = pair_row(turn.pair, turn.query, getattr(turn, "activity", None))
        rows.append(row)
        per_side["a"].append(fa)
        per_side["b"].append(fb)
        meta.append((turn.user_id, turn.shown_epoch_ms, turn.pair_label, turn.query_id))
    return _table(rows, per_side, meta)


def pointwise_table(pairs) -> Table:
    """One row per (previous, current) pointwise pair; a = current, b = previous."""
    rows, per_side, meta = [], {"a": [], "b": []}, []
    for previous, current in pairs:
        row, fa, fb = followup_row(current.traces[0], previous.traces[0], current.query,
                                   previous.query, current.duration_ms, previous.duration_ms)
        rows.append(row)
        per_side["a"].append(fa)
        per_side["b"].append(fb)
        meta.append((current.user_id, current.shown_epoch_ms, current.better_than_previous,
                     current.query_id))
    return _table(rows, per_side, meta)


def _table(rows, per_side, meta, names=None) -> Table:
    if not rows:
        empty = np.zeros((0, len(OBSERVED)))
        return Table(np.zeros((0, len(names or []))), list(names or []), np.array([], dtype=object),
                     np.zeros(0), np.zeros(0, int), empty, empty,
                     np.zeros((0, len(EXPECTATION_TEXT))), np.zeros((0, len(EXPECTATION_TEXT))))
    names = list(names or sorted(rows[0]))
    X = np.array([[r.get(n, np.nan) for n in names] for r in rows], dtype=float)
    observed_a, text_a = _side_arrays(per_side["a"])
    observed_b, text_b = _side_arrays(per_side["b"])
    return Table(X, names, np.array([m[0] for m in meta], dtype=object),
                 np.array([m[1] for m in meta], dtype=float), np.array([m[2] for m in meta], dtype=int),
                 observed_a, observed_b, text_a, text_b, [m[3] for m in meta])


# --- fold-level columns -------------------------------------------------------------------
# Attention indices: a-priori-signed averages ("more attention to a" is positive) of
# several noisy measures of the same thing. Each component is divided by its root mean
# square on the training rows, then they are averaged with equal weights: nothing about
# the label is fitted, which keeps the implicit part to four numbers on ~500 pairs.
INDICES = {
    "i_index_attention": ("i_d_m_hover_ms", "i_d_m_dwell_ms", "i_d_g_hover_ms", "i_d_g_dwell_ms",
                          "i_d_m_furthest", "i_d_g_furthest", "i_d_m_coverage_lines",
                          "i_d_g_coverage_lines"),
    "i_index_user_share": ("i_user_share_m_hover_ms", "i_user_share_m_dwell_ms",
                           "i_user_share_g_hover_ms", "i_user_share_g_dwell_ms"),
    "i_index_expected": ("i_resid_m_hover_ms", "i_resid_m_dwell_ms", "i_resid_g_hover_ms",
                         "i_resid_g_dwell_ms"),
    "i_index_decision": ("i_decision_m_last_side", "i_decision_g_last_side",
                         "i_decision_m_share_last_15s", "i_decision_g_share_last_15s",
                         "i_decision_m_share_second_half", "i_decision_g_share_second_half",
                         "i_decision_m_share_compare", "i_decision_g_share_compare",
                         "i_decision_m_return_side", "i_decision_g_return_side"),
}


def fit_expected(table: Table, train_rows) -> dict[str, F.ExpectedReading]:
    """Expected reading (log observed ~ text length/layout) per observed quantity, fitted
    on the replies of the training rows only."""
    train_rows = np.asarray(train_rows)
    text_train = np.vstack([table.text_a[train_rows], table.text_b[train_rows]])
    models = {}
    for j, name in enumerate(OBSERVED):
        observed = np.concatenate([table.observed_a[train_rows, j], table.observed_b[train_rows, j]])
        models[name] = F.ExpectedReading(ridge=1.0).fit(text_train, observed)
    return models


def fold_columns(table: Table, train_rows, expected=None, index_scale=None):
    """Columns that must be fitted inside a fold, for every row of ``table``:
    ``i_resid_*``: observed − expected reading of a minus that of b (expectation from
    :func:`fit_expected` on the training rows);
    ``i_user_*``: those differences and the dwell shares centred on the same user's
    earlier rows (no look-ahead; uses no labels);
    ``i_index_*``: the attention indices (component scales from the training rows).
    Returns (matrix, names, fitted) where ``fitted`` holds what a model file must keep."""
    train_rows = np.asarray(train_rows)
    expected = expected or fit_expected(table, train_rows)
    columns, names = [], []
    for j, name in enumerate(OBSERVED):
        model = expected[name]
        columns.append(model.residual(table.text_a, table.observed_a[:, j])
                       - model.residual(table.text_b, table.observed_b[:, j]))
        names.append(f"i_resid_{name}")
    base = np.column_stack(columns)
    share_cols = [i for i, n in enumerate(table.names) if n.startswith("i_share_")]
    to_centre = np.column_stack([base, table.X[:, share_cols]])
    centred = F.running_normalise(to_centre, table.groups, table.order, prior=3.0)
    names += [f"i_user_{n[2:]}" for n in names] + [f"i_user_{table.names[i][2:]}" for i in share_cols]
    X = np.column_stack([table.X, base, centred])
    all_names = table.names + names
    index_scale = index_scale or {}
    index_columns = []
    for index, parts in INDICES.items():
        cols = [all_names.index(p) for p in parts if p in all_names]
        Z = np.nan_to_num(X[:, cols])
        if index not in index_scale:
            index_scale[index] = (np.sqrt((Z[train_rows] ** 2).mean(axis=0)) + 1e-9).tolist()
        index_columns.append((Z / np.asarray(index_scale[index])).mean(axis=1) if cols else np.zeros(len(X)))
    extra = np.column_stack([base, centred] + [c[:, None] for c in index_columns])
    return extra, names + list(INDICES), {"expected": expected, "index_scale": index_scale}


# --- scoring one new example with a saved model ----------------------------------------
def model_row(model, row: dict, fa: dict, fb: dict, history: Table | None = None,
              user_id: str = "user", order: float = 0.0) -> dict[str, float]:
    """All columns of one new example as the model saw them in training: the fitted
    expectation and index scales come from the model file; per-user centring uses
    ``history`` (the same user's earlier examples, features only) when given."""
    fitted = model_fitted(model)
    one = _table([row], {"a": [fa], "b": [fb]}, [(user_id, order, 0, None)])
    table = one if history is None else _concat_tables(history, one)
    extra, extra_names, _ = fold_columns(table, np.zeros(0, dtype=int), expected=fitted["expected"],
                                         index_scale=fitted["index_scale"])
    values = np.concatenate([table.X[-1], extra[-1]])
    return dict(zip(table.names + extra_names, values.tolist()))


class ExampleHistory:
    """A user's earlier examples as a model file's scoring needs them: features only, no
    labels, oldest first, at most ``keep``. Training centres each row on the same user's
    earlier rows (``i_user_*``, the user-share index); scoring a new example against
    this history gives it the very columns it would have had in training. Each row
    remembers its conversation, so a deleted conversation stops counting (:meth:`forget`)."""

    def __init__(self, keep: int = 200):
        self.keep = keep
        self.table: Table | None = None

    def __len__(self) -> int:
        return 0 if self.table is None else len(self.table.y)

    def add(self, row: dict, fa: dict, fb: dict, user_id: str = "user", order: float = 0.0,
            conversation_id: str | None = None) -> None:
        one = _table([row], {"a": [fa], "b": [fb]}, [(user_id, order, 0, conversation_id)])
        self.table = one if self.table is None else _concat_tables(self.table, one)
        if len(self.table.y) > self.keep:
            self.table = self.table.subset(np.arange(len(self.table.y) - self.keep, len(self.table.y)))

    def forget(self, conversation_id: str) -> None:
        """Drop the rows of a deleted conversation."""
        if self.table is not None:
            keep = [i for i, c in enumerate(self.table.ids) if c != conversation_id]
            self.table = self.table.subset(keep) if keep else None


def model_fitted(model) -> dict:
    """The fold-level fitted parts stored in a model file."""
    stored = model.expected_reading
    return {"expected": {k: F.ExpectedReading.from_dict(v) for k, v in stored.get("models", {}).items()},
            "index_scale": dict(stored.get("index_scale", {}))}


def fitted_to_dict(fitted: dict) -> dict:
    return {"models": {k: m.to_dict() for k, m in fitted["expected"].items()},
            "index_scale": fitted["index_scale"], "observed": list(OBSERVED),
            "text": list(EXPECTATION_TEXT)}


def _concat_tables(a: Table, b: Table) -> Table:
    """Rows of ``a`` then ``b``, in the columns of either (``a``'s first; a column one of
    them lacks is NaN there: the study has no activity columns, the user's rows do)."""
    names = list(a.names) + [n for n in b.names if n not in a.names]

    def widened(table):
        where = {name: i for i, name in enumerate(table.names)}
        return np.column_stack([table.X[:, where[n]] if n in where else np.full(len(table.X), np.nan)
                                for n in names]) if names else table.X[:, :0]
    return Table(np.vstack([widened(a), widened(b)]), names, np.concatenate([a.groups, b.groups]),
                 np.concatenate([a.order, b.order]), np.concatenate([a.y, b.y]),
                 np.vstack([a.observed_a, b.observed_a]), np.vstack([a.observed_b, b.observed_b]),
                 np.vstack([a.text_a, b.text_a]), np.vstack([a.text_b, b.text_b]), a.ids + b.ids)


# --- column names in words, for people reading a score (`align reward scores`) ------------
_WORDS = {
    "i_index_attention": "attention (hover, dwell, reach, lines covered)",
    "i_index_user_share": "its share of your attention, against your habit",
    "i_index_decision": "where your attention settled",
    "i_index_expected": "reading beyond what its length predicts",
    "i_next_message_log_s": "time before your next message",
    "i_d_next_message_log_s": "time before your next message",
    "t_chars_log": "length (characters)", "t_words_log": "length (words)",
    "t_lines_log": "length (lines)", "t_bold": "bold spans", "t_list_items": "list items",
    "t_headings": "headings", "t_digits_share": "share of digits", "t_numbers": "numbers",
    "t_type_token": "word variety",
    "i_act_d_lines_on_screen_share": "share of its lines scrolled over",
    "i_act_d_selected_share": "share of it selected", "i_act_d_copied": "copied",
    "i_act_d_stopped": "stopped while written",
}
_SOURCE_WORDS = {"m": "pointer", "g": "gaze"}


def column_words(name: str) -> str:
    """A model column in words: what it compares, not how it is scaled ("this reply
    against the other" is implied by every column but the next-message time)."""
    if name in _WORDS:
        return _WORDS[name]
    for prefix, how in (("i_act_d_", ""), ("i_d_", ""), ("i_share_", "share of "),
                        ("i_user_share_", "share against your habit: "),
                        ("i_resid_", "beyond its length: "), ("i_decision_", "before the pick: "),
                        ("t_", "")):
        if name.startswith(prefix):
            rest = name[len(prefix):]
            source, _, key = rest.partition("_")
            if source in _SOURCE_WORDS and key:
                rest = f"{_SOURCE_WORDS[source]} {key}"
            rest = rest.removesuffix("_ms").removesuffix("_log_s").removesuffix("_px")
            return how + rest.replace("_", " ")
    return name
