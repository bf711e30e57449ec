"""Stage 1: preference pairs from the user's consented conversations.

    pairs, report = build_pairs(rows, PairConfig())

``rows`` is what ``store.training.rows()`` (or a snapshot the app wrote) returns: plain
dicts for ``conversations``, ``messages``, ``feedback`` and, when asked for, ``imported``
research turns. Consent, incognito and deletion were settled before the rows got here.

Sources, each pair labelled (chosen ≻ rejected) with a flip probability ε — the chance
that the label is wrong, which the DPO loss weighs pairs by (align/dpo.py):

=============  ==================================================  =====================
source         what says which reply is better                      ε
=============  ==================================================  =====================
pick           the user chose left or right side by side (Compare)  ``epsilon_pick``
thumbs         ▲ on one reply, ▼ on a sibling (same prompt)          ``epsilon_thumbs``
regenerate     the user regenerated away from a reply and went on   ``epsilon_regenerate``
               with a later sibling
reward         the reward model's P(a ≻ b) for siblings nobody       1 − confidence,
               labelled                                              capped at 0.45
imported       a research participant's pick (``--include-imported``) ``epsilon_imported``
=============  ==================================================  =====================

The first three come from the user's own actions; regenerate and reward are inferred
(their ε is 1 − confidence, never above ``max_inferred_epsilon``). A pair found by
several sources keeps the most certain label; two sources that disagree keep the one
with the clearly smaller ε, or drop the pair when they are equally sure. Identical texts
are deduplicated. The report counts every skipped candidate by reason and how often the
chosen reply is the longer one (inferred labels tend to reward length).
"""
from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from typing import Callable

EXPLICIT_SOURCES = ("pick", "thumbs", "imported")
INFERRED_SOURCES = ("regenerate", "reward")
DEFAULT_SYSTEM_PROMPT = "You are Glance, a helpful, concise assistant."


@dataclass
class PairConfig:
    include_imported: bool = False
    max_pairs: int | None = None
    epsilon_pick: float = 0.05           # a deliberate side-by-side choice
    epsilon_thumbs: float = 0.10         # two separate ratings of the same prompt
    epsilon_regenerate: float = 0.30     # inferred: confidence 0.7 that the kept one is better
    epsilon_imported: float = 0.15       # someone else's explicit pick
    max_inferred_epsilon: float = 0.45
    min_reward_confidence: float = 0.55  # below this the reward model is not asked to label
    max_prompt_chars: int = 6000         # older turns beyond this are left out of the prompt


@dataclass(frozen=True)
class Pair:
    prompt: tuple            # chat messages ({"role", "content"}), system first, ends on the user turn
    chosen: str
    rejected: str
    source: str
    epsilon: float
    conversation_id: str
    prompt_id: str           # the user message both replies answer
    chosen_id: str
    rejected_id: str
    # False for a reply cut short (stopped by the user, or at its token limit): it is
    # trained without the end-of-turn token, so the adapter never learns to stop there.
    chosen_finished: bool = True
    rejected_finished: bool = True

    @property
    def key(self) -> tuple[str, str, str]:
        return self.prompt_id, self.chosen_id, self.rejected_id

    def to_dict(self) -> dict:
        data = asdict(self)
        data["prompt"] = [dict(m) for m in self.prompt]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "Pair":
        data = dict(data)
        data["prompt"] = tuple(dict(m) for m in data["prompt"])
        return cls(**data)


@dataclass
class Judgement:
    """What a reward model says of two replies to the same prompt."""
    p_a_over_b: float
    confidence: float | None = None   # calibrated P(the preferred one really is better)

    @property
    def sure(self) -> float:
        return self.confidence if self.confidence is not None else max(self.p_a_over_b,
                                                                        1 - self.p_a_over_b)


# judge(reply_a, reply_b) -> Judgement | None ; replies are message dicts from the rows.
Judge = Callable[[dict, dict], "Judgement | None"]


@dataclass
class PairReport:
    by_source: dict = field(default_factory=dict)
    skipped: dict = field(default_factory=dict)
    conflicts: int = 0
    duplicates: int = 0
    dropped_over_max: int = 0
    length_bias: dict = field(default_factory=dict)
    conversations: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


# --- the conversation tree -----------------------------------------------------------------
class _Tree:
    def __init__(self, rows: dict):
        self.messages = {m["id"]: m for m in rows.get("messages", [])}
        self.children = defaultdict(list)
        for message in self.messages.values():
            self.children[message["parent_id"]].append(message)
        for kids in self.children.values():
            kids.sort(key=lambda m: (m["created_wall_ns"], m["id"]))
        self.system = {}
        for conversation in rows.get("conversations", []):
            settings = json.loads(conversation.get("settings") or "{}")
            self.system[conversation["id"]] = settings.get("system_prompt", DEFAULT_SYSTEM_PROMPT)

    def replies_to(self, user_id: str) -> list[dict]:
        return [m for m in self.children.get(user_id, []) if m["role"] == "assistant"]

    def prompt(self, user_id: str, max_chars: int) -> tuple | None:
        """System + the turns leading to ``user_id`` (oldest dropped beyond max_chars);
        None when a message on the way is missing (not consented or deleted)."""
        path, cursor = [], user_id
        while cursor is not None:
            message = self.messages.get(cursor)
            if message is None:
                return None
            path.append(message)
            cursor = message["parent_id"]
        turns = [{"role": m["role"], "content": m["content"]} for m in reversed(path)
                 if m["role"] in ("user", "assistant") and m["content"]]
        while len(turns) > 1 and sum(len(t["content"]) for t in turns) > max_chars:
            turns = turns[1:]
            while len(turns) > 1 and turns[0]["role"] == "assistant":
                turns = turns[1:]
        system = (self.system.get(path[0]["conversation_id"]) or "").strip()
        return tuple(([{"role": "system", "content": system}] if system else []) + turns)


# --- candidates per source ----------------------------------------------------------------
def _pick_candidates(tree: _Tree, rows: dict, config: PairConfig, skipped: Counter):
    latest = {}
    for row in rows.get("feedback", []):
        if row["kind"] == "pick":
            latest[frozenset((row["message_id"], row["other_message_id"]))] = row
    for row in latest.values():
        left, right = row["message_id"], row["other_message_id"]
        if row["value"] == 0:
            skipped["pick_tie"] += 1
            continue
        chosen, rejected = (left, right) if row["value"] > 0 else (right, left)
        yield chosen, rejected, "pick", config.epsilon_pick


def _picked_ties(rows: dict) -> set[frozenset]:
    """Pairs of replies whose latest side-by-side pick was a tie."""
    latest = {}
    for row in rows.get("feedback", []):
        if row["kind"] == "pick":
            latest[frozenset((row["message_id"], row["other_message_id"]))] = row["value"]
    return {pair for pair, value in latest.items() if value == 0}


def _thumb_candidates(tree: _Tree, rows: dict, config: PairConfig, skipped: Counter):
    latest = {}
    for row in rows.get("feedback", []):   # ordered by time: the last one wins
        if row["kind"] == "thumb":
            latest[row["message_id"]] = row["value"]
    by_prompt = defaultdict(lambda: ([], []))
    for message_id, value in latest.items():
        message = tree.messages.get(message_id)
        if message is None or value == 0:
            continue
        by_prompt[message["parent_id"]][0 if value > 0 else 1].append(message_id)
    for liked, disliked in by_prompt.values():
        if liked and not disliked or disliked and not liked:
            skipped["thumbs_without_opposite_sibling"] += len(liked) + len(disliked)
        for good in liked:
            for bad in disliked:
                yield good, bad, "thumbs", config.epsilon_thumbs


def _regenerate_candidates(tree: _Tree, rows: dict, config: PairConfig, skipped: Counter):
    epsilon = min(config.epsilon_regenerate, config.max_inferred_epsilon)
    for parent_id, kids in tree.children.items():
        replies = [m for m in kids if m["role"] == "assistant"]
        if len(replies) < 2:
            continue
        continued = [m for m in replies if tree.children.get(m["id"])]
        if len(continued) != 1:
            skipped["regenerate_ambiguous" if continued else "regenerate_not_continued"] += 1
            continue
        kept = continued[0]
        for earlier in replies:
            if earlier["created_wall_ns"] < kept["created_wall_ns"] and not tree.children.get(earlier["id"]):
                yield kept["id"], earlier["id"], "regenerate", epsilon


def _reward_candidates(tree: _Tree, judge: Judge | None, config: PairConfig, skipped: Counter,
                       labelled: set):
    if judge is None:
        return
    for parent_id, kids in tree.children.items():
        replies = [m for m in kids if m["role"] == "assistant" and m["content"]]
        for i, a in enumerate(replies):
            for b in replies[i + 1:]:
                if frozenset((a["id"], b["id"])) in labelled:
                    continue
                judgement = judge(a, b)
                if judgement is None:
                    skipped["reward_no_judgement"] += 1
                    continue
                if judgement.sure < config.min_reward_confidence:
                    skipped["reward_unsure"] += 1
                    continue
                # Never surer than the user's own thumbs: the score is a model's guess
                # (uncalibrated on this user), and --max-pairs and the DPO loss
                # favour the smallest ε.
                epsilon = min(max(1.0 - judgement.sure, config.epsilon_thumbs),
                              config.max_inferred_epsilon)
                if judgement.p_a_over_b >= 0.5:
                    yield a["id"], b["id"], "reward", epsilon
                else:
                    yield b["id"], a["id"], "reward", epsilon


def _imported_pairs(rows: dict, config: PairConfig) -> list[Pair]:
    pairs = []
    for row in rows.get("imported", []):
        left = (row["left_id"], row["left_text"])
        right = (row["right_id"], row["right_text"])
        chosen, rejected = (left, right) if int(row["value"]) == 1 else (right, left)
        # The app's system prompt, as live pairs carry theirs: without one the chat template
        # puts in the base model's own ("You are SmolLM, ..."), which the app never sends.
        prompt = ({"role": "system", "content": DEFAULT_SYSTEM_PROMPT},
                  {"role": "user", "content": row["query"] or ""})
        pairs.append(Pair(prompt=prompt,
                          chosen=chosen[1] or "", rejected=rejected[1] or "", source="imported",
                          epsilon=config.epsilon_imported, conversation_id=row["conversation_id"],
                          prompt_id=row["turn_id"], chosen_id=chosen[0], rejected_id=rejected[0]))
    return pairs


def explicit_preferences(rows: dict, config: PairConfig | None = None) -> dict[frozenset, str]:
    """The user's explicit orderings of two replies to one prompt, as {frozenset of the two
    ids: the preferred id}: side-by-side picks and ▲/▼ siblings (a pick wins over thumbs,
    as its ε is smaller). No text is compared and nothing deduplicated: these label the
    replies the user read (``train.live_pointwise_table``), not DPO pairs."""
    config = config or PairConfig()
    tree, skipped, preferred = _Tree(rows), Counter(), {}
    for source in (_thumb_candidates, _pick_candidates):      # picks last: they win
        for chosen, rejected, _, _ in source(tree, rows, config, skipped):
            preferred[frozenset((chosen, rejected))] = chosen
    return preferred


# --- the stage -----------------------------------------------------------------------------
def build_pairs(rows: dict, config: PairConfig | None = None,
                judge: Judge | None = None) -> tuple[list[Pair], PairReport]:
    config = config or PairConfig()
    tree = _Tree(rows)
    skipped: Counter = Counter()
    ties = _picked_ties(rows)         # the user said "equal": no inference may say otherwise
    candidates = list(_pick_candidates(tree, rows, config, skipped))
    candidates.extend(_thumb_candidates(tree, rows, config, skipped))
    for candidate in _regenerate_candidates(tree, rows, config, skipped):
        if frozenset(candidate[:2]) in ties:    # (Compare, tie, then went on from one side)
            skipped["regenerate_picked_tie"] += 1
        else:
            candidates.append(candidate)
    labelled = {frozenset((c, r)) for c, r, _, _ in candidates} | ties
    candidates.extend(_reward_candidates(tree, judge, config, skipped, labelled))

    report = PairReport()
    pairs = _resolve(candidates, tree, config, skipped, report)
    if config.include_imported:
        pairs.extend(_imported_pairs(rows, config))
    pairs = _dedupe_texts(pairs, report)
    # Most certain first, then newest prompt: what --max-pairs keeps.
    created = {m_id: m["created_wall_ns"] for m_id, m in tree.messages.items()}
    pairs.sort(key=lambda p: (p.epsilon, -created.get(p.prompt_id, 0), p.key))
    if config.max_pairs is not None and len(pairs) > config.max_pairs:
        report.dropped_over_max = len(pairs) - config.max_pairs
        pairs = pairs[:config.max_pairs]
    report.by_source = dict(Counter(p.source for p in pairs))
    report.skipped = {**skipped, **report.skipped}    # (identical replies: counted above)
    report.conversations = len({p.conversation_id for p in pairs})
    report.length_bias = length_bias(pairs)
    return pairs, report


def _resolve(candidates, tree: _Tree, config: PairConfig, skipped: Counter,
             report: PairReport) -> list[Pair]:
    """One label per unordered pair of replies: the most certain source wins."""
    grouped = defaultdict(list)
    for chosen, rejected, source, epsilon in candidates:
        grouped[frozenset((chosen, rejected))].append((epsilon, source, chosen, rejected))
    pairs = []
    for options in grouped.values():
        options.sort()
        best = options[0]
        against = [o for o in options if o[2] != best[2]]
        if against:
            report.conflicts += 1
            if against[0][0] <= best[0]:
                skipped["conflicting_labels"] += 1
                continue
        report.duplicates += len(options) - 1 - len(against)
        epsilon, source, chosen_id, rejected_id = best
        chosen, rejected = tree.messages.get(chosen_id), tree.messages.get(rejected_id)
        if chosen is None or rejected is None:
            skipped["reply_not_available"] += 1
            continue
        if chosen["parent_id"] != rejected["parent_id"] or chosen["parent_id"] is None:
            skipped["different_prompts"] += 1
            continue
        if not chosen["content"].strip() or not rejected["content"].strip():
            skipped["empty_reply"] += 1
            continue
        prompt = tree.prompt(chosen["parent_id"], config.max_prompt_chars)
        if prompt is None:
            skipped["context_not_available"] += 1
            continue
        pairs.append(Pair(prompt=prompt, chosen=chosen["content"], rejected=rejected["content"],
                          source=source, epsilon=float(epsilon),
                          conversation_id=chosen["conversation_id"], prompt_id=chosen["parent_id"],
                          chosen_id=chosen_id, rejected_id=rejected_id,
                          chosen_finished=_finished(chosen), rejected_finished=_finished(rejected)))
    return pairs


def _finished(message: dict) -> bool:
    return message.get("finish_reason") in (None, "stop")


def _dedupe_texts(pairs: list[Pair], report: PairReport) -> list[Pair]:
    seen, kept = set(), []
    for pair in sorted(pairs, key=lambda p: (p.epsilon, p.key)):
        if pair.chosen == pair.rejected:
            report.skipped["identical_replies"] = report.skipped.get("identical_replies", 0) + 1
            continue
        text_key = _digest([pair.prompt[-1]["content"], pair.chosen, pair.rejected])
        if text_key in seen:
            report.duplicates += 1
            continue
        seen.add(text_key)
        kept.append(pair)
    return kept


def length_bias(pairs: list[Pair]) -> dict:
    """How often the chosen reply is the longer one, overall and per source."""
    def summary(group):
        if not group:
            return {"pairs": 0}
        longer = sum(len(p.chosen) > len(p.rejected) for p in group)
        return {"pairs": len(group),
                "chosen_longer_share": round(longer / len(group), 3),
                "mean_chosen_chars": round(sum(len(p.chosen) for p in group) / len(group), 1),
                "mean_rejected_chars": round(sum(len(p.rejected) for p in group) / len(group), 1)}
    by_source = defaultdict(list)
    for pair in pairs:
        by_source[pair.source].append(pair)
    return {"all": summary(pairs), **{s: summary(g) for s, g in sorted(by_source.items())}}


def fingerprint(pairs: list[Pair], context: str = "") -> str:
    """The identity of a pair set: same pairs, labels, ε and texts (and ``context``: what
    they would be trained for, e.g. the base model and the settings) → same fingerprint.
    The texts count: a conversation's system prompt changed afterwards changes every
    prompt of its pairs, which is something new to learn."""
    return _digest([context] + sorted(
        f"{p.source}|{p.epsilon:.4f}|{'|'.join(p.key)}|{int(p.chosen_finished)}"
        f"{int(p.rejected_finished)}|" + _digest([json.dumps(p.prompt, sort_keys=True),
                                                   p.chosen, p.rejected])
        for p in pairs))[:24]


def _digest(parts) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode("utf-8"))
        digest.update(b"\0")
    return digest.hexdigest()
