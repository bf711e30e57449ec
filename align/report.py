"""`python -m align.report DIR SVG`: the figures behind docs/reward-model.md.

- an ablation of feature sets under the grouped protocol (same folds for every row);
- feature importances of the final pairwise model: standardised coefficients with 95 %
  intervals from a bootstrap over workers (the model refitted on resampled workers);
- a reliability plot of out-of-fold probabilities (grouped folds), written as SVG.
"""
import json
from pathlib import Path
from typing import NamedTuple

import numpy as np

from . import evaluate as E
from . import reward
from .examples import fold_columns, pairwise_table


class Weighted(NamedTuple):
    """An ablation row fitted with another power of the user weights (``reward.user_weights``)."""
    sets: tuple
    user_weight_power: float


ABLATION = {
    "text (length + layout, 9)": (E.TEXT,),
    "text, all 26 statistics": (E.TEXT_ALL,),
    "attention index": (("i_index_attention",),),
    "user-centred share index": (("i_index_user_share",),),
    "decision-phase index": (("i_index_decision",),),
    "observed − expected index": (("i_index_expected",),),
    "implicit (chosen in fold)": E.IMPLICIT,
    "implicit, all raw columns": (("i_d_", "i_share_", "i_decision_", "i_resid_", "i_user_"),),
    "text + attention": (E.TEXT + ("i_index_attention",),),
    "text + user share": (E.TEXT + ("i_index_user_share",),),
    "text + decision": (E.TEXT + ("i_index_decision",),),
    "text + observed − expected": (E.TEXT + ("i_index_expected",),),
    "text + one index set chosen in fold": E.FEATURE_SETS["text_implicit_chosen"],
    "text_implicit: text + attention + user share": E.FEATURE_SETS["text_implicit"],
    "text_implicit, every row weighted the same": Weighted(E.FEATURE_SETS["text_implicit"], 0.0),
    "text + all raw implicit columns": ((("t_",) + ("i_d_", "i_share_", "i_decision_", "i_resid_", "i_user_")),),
}


def ablation(table, seeds: int = 5, folds: int = 5, progress=None) -> dict:
    out = {}
    for label, sets in ABLATION.items():
        key = f"_ablation_{len(out)}"
        if not isinstance(sets, Weighted):
            sets = Weighted(sets, reward.USER_WEIGHT_POWER)
        E.FEATURE_SETS[key] = sets.sets
        try:
            r = E.cross_validate(table, key, True, True, seeds, folds,
                                 user_weight_power=sets.user_weight_power)
        finally:
            del E.FEATURE_SETS[key]
        out[label] = {"mean": r["mean"], "sd": r["sd"], "pooled": r["pooled"], "auc": r["auc"]}
        if progress:
            progress(f"{label}: {r['mean']:.3f}")
    return out


def importances(table, feature_set: str = "text_implicit", boots: int = 200, seed: int = 0) -> dict:
    """Standardised coefficients of the model trained on everything, and their 2.5 / 97.5 %
    percentiles over refits on workers resampled with replacement (columns and C fixed
    to the full-data choice, so the interval is about the data, not the selection)."""
    rows = np.arange(len(table.y))
    extra, extra_names, _ = fold_columns(table, rows)
    X = np.column_stack([table.X, extra])
    names = table.names + extra_names
    model, columns = reward.fit(X, table.y, table.groups, True, names=names,
                                candidates=E.candidates(names, feature_set),
                                matrix_for=lambda inner: E.full_matrix(table, inner)[0])
    C = model.info["C"]
    users = np.unique(table.groups)
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(boots):
        chosen = rng.choice(users, size=len(users), replace=True)
        parts = [np.flatnonzero(table.groups == u) for u in chosen]
        idx = np.concatenate(parts)
        draw = np.repeat(np.arange(len(parts)), [len(part) for part in parts])  # a worker drawn twice counts as two
        # expectation and index scales refitted on the resample too
        extra_b, _, _ = fold_columns(table, idx)
        Xb = np.column_stack([table.X, extra_b])[:, columns]
        draws.append(reward.fit_fixed(Xb[idx], table.y[idx], C, True,
                                      weights=reward.user_weights(draw)).coef)
    draws = np.array(draws)
    low, high = np.percentile(draws, [2.5, 97.5], axis=0)
    return {"C": C, "boots": boots, "features": [
        {"name": model.names[i], "coef": float(model.coef[i]), "low": float(low[i]), "high": float(high[i])}
        for i in np.argsort(-np.abs(model.coef))]}


def reliability(y, p, bins: int = 8) -> dict:
    edges = np.quantile(p, np.linspace(0, 1, bins + 1))
    which = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, bins - 1)
    points = []
    for b in range(bins):
        m = which == b
        if m.any():
            points.append({"predicted": float(p[m].mean()), "observed": float(y[m].mean()), "n": int(m.sum())})
    ece = sum(pt["n"] * abs(pt["predicted"] - pt["observed"]) for pt in points) / len(y)
    return {"points": points, "brier": float(np.mean((p - y) ** 2)), "ece": float(ece)}


def reliability_svg(curves: dict, path) -> Path:
    """A small hand-written SVG: predicted vs observed, one colour per curve."""
    size, pad = 360, 48
    lo, hi = 0.2, 0.8  # the models never leave this range on IFLLM

    def sx(v):
        return pad + (v - lo) / (hi - lo) * (size - 2 * pad)

    def sy(v):
        return size - pad - (v - lo) / (hi - lo) * (size - 2 * pad)

    colours = ["#1f77b4", "#d62728", "#2ca02c"]
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{size + 170}" height="{size}" '
             f'font-family="sans-serif" font-size="11">',
             f'<rect x="{pad}" y="{pad}" width="{size - 2 * pad}" height="{size - 2 * pad}" '
             'fill="none" stroke="#999"/>',
             f'<line x1="{sx(lo)}" y1="{sy(lo)}" x2="{sx(hi)}" y2="{sy(hi)}" stroke="#bbb" '
             'stroke-dasharray="4 3"/>']
    for v in np.arange(lo, hi + 1e-9, 0.1):
        parts.append(f'<text x="{sx(v):.1f}" y="{size - pad + 14}" text-anchor="middle">{v:.1f}</text>')
        parts.append(f'<text x="{pad - 6}" y="{sy(v) + 4:.1f}" text-anchor="end">{v:.1f}</text>')
    parts.append(f'<text x="{size / 2}" y="{size - 10}" text-anchor="middle">predicted P(a ≻ b)</text>')
    parts.append(f'<text x="14" y="{size / 2}" text-anchor="middle" transform="rotate(-90 14 {size / 2})">'
                 'observed share a ≻ b</text>')
    for k, (label, curve) in enumerate(curves.items()):
        colour = colours[k % len(colours)]
        pts = [(sx(min(max(pt["predicted"], lo), hi)), sy(min(max(pt["observed"], lo), hi)), pt["n"])
               for pt in curve["points"]]
        parts.append('<polyline fill="none" stroke="%s" points="%s"/>'
                     % (colour, " ".join(f"{x:.1f},{y:.1f}" for x, y, _ in pts)))
        for x, y, n in pts:
            parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{2 + np.sqrt(n) / 3:.1f}" fill="{colour}" '
                         'fill-opacity="0.6"/>')
        parts.append(f'<rect x="{size + 4}" y="{pad + 18 * k}" width="10" height="10" fill="{colour}"/>')
        parts.append(f'<text x="{size + 18}" y="{pad + 9 + 18 * k}">{label} (ECE {curve["ece"]:.3f})</text>')
    parts.append("</svg>")
    path = Path(path)
    path.write_text("\n".join(parts) + "\n")
    return path


def report(directory, svg_path, seeds: int = 5, boots: int = 200, progress=None) -> dict:
    from .ifllm import read_ifllm

    table = pairwise_table(read_ifllm(directory).pairwise_turns())
    out = {"pairs": int(len(table.y)), "workers": int(len(np.unique(table.groups)))}
    out["ablation"] = ablation(table, seeds, progress=progress)
    curves = {}
    for feature_set in ("text", "text_implicit"):
        r = E.cross_validate(table, feature_set, True, True, seeds)
        curves[feature_set] = reliability(table.y, r["_oof"])
    out["reliability"] = curves
    reliability_svg(curves, svg_path)
    out["importances"] = importances(table, boots=boots)
    return out


if __name__ == "__main__":  # pragma: no cover - manual use: python -m align.report DIR SVG
    import sys
    from .cli import _single_threaded
    _single_threaded()
    print(json.dumps(report(sys.argv[1], sys.argv[2], progress=lambda m: print(m, file=sys.stderr)),
                     indent=1))
