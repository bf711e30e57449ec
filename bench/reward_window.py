"""How much of the study's reading signal comes after the choice.

    .venv/bin/python bench/reward_window.py [--ifllm ../shared/ifllm] [--cuts 0,3,6] [--seeds 5] [--json]

An IFLLM pair's reading window ends when the next query is sent, so it also holds the
rating and the typing that follow the choice (the study logged no pick time). This cuts
every pair's window ``cut`` seconds before its end (samples and the decision moment
alike; pairs whose window would be shorter than ``--min-left`` seconds keep at least that
much) and measures the grouped accuracy (folds by worker, as `align reward evaluate`) of
each feature set. If ``implicit`` falls as the cut grows while ``text`` stays, part of
what reading "predicted" was behaviour after the decision. A sensitivity figure for the
report, not a model choice: nothing here changes what the app ships.

Prints one JSON object: ``cuts_s``, ``median_window_s`` and, per feature set, the grouped
mean accuracy at each cut (``<set>_grouped``: list in the order of ``cuts_s``).
"""
import argparse
import statistics
import sys
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from common import print_result  # noqa: E402

SETS = ("text", "implicit", "text_implicit")


def cut_turn(turn, cut_ms: float, min_left_ms: float):
    """The turn as if the reading had stopped ``cut_ms`` earlier."""
    end = max(turn.duration_ms - cut_ms, min(min_left_ms, turn.duration_ms))
    a, b = (trace.before(end) for trace in turn.pair.sides())
    from feedback_store.trace import PairTrace
    return SimpleNamespace(pair_label=turn.pair_label, pair=PairTrace(a, b, pick_t_ms=end),
                           query=turn.query, user_id=turn.user_id,
                           shown_epoch_ms=turn.shown_epoch_ms, query_id=turn.query_id)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ifllm", default=str(ROOT.parent / "shared" / "ifllm"))
    parser.add_argument("--cuts", default="0,3,6", help="seconds cut from each window's end")
    parser.add_argument("--min-left", type=float, default=5.0)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    from threadpoolctl import threadpool_limits
    threadpool_limits(limits=1)          # as `align reward evaluate` (ten times faster here)
    from align.evaluate import cross_validate
    from align.examples import pairwise_table
    from align.ifllm import read_ifllm

    cuts = [float(c) for c in args.cuts.split(",")]
    turns = [t for t in read_ifllm(args.ifllm).pairwise_turns() if t.pair_label is not None]
    result = {"pairs": len(turns), "cuts_s": cuts,
              "median_window_s": round(statistics.median(t.duration_ms for t in turns) / 1000, 1),
              **{f"{name}_grouped": [] for name in SETS}}
    for cut in cuts:
        table = pairwise_table([cut_turn(t, cut * 1000, args.min_left * 1000) for t in turns])
        for name in SETS:
            scored = cross_validate(table, name, True, grouped=True, seeds=args.seeds,
                                    folds=args.folds)
            result[f"{name}_grouped"].append(round(scored["mean"], 4))
        if not args.json:
            print(f"cut {cut:g} s: " + ", ".join(f"{n} {result[n + '_grouped'][-1]:.3f}"
                                                for n in SETS), file=sys.stderr)
    print_result(result, args.json)


if __name__ == "__main__":
    main()
