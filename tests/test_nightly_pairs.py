"""Pairs for nightly DPO from a real store: every source puts the reply the label prefers
on the chosen side, consent periods and imported data are respected, conflicts and
duplicates are settled, and the length bias is reported."""
import time

import pytest

from align.pairs import DEFAULT_SYSTEM_PROMPT, Judgement, PairConfig, build_pairs, fingerprint
from feedback_store import Conversation, Message
from nightly_support import insert_study_pick


def add(store, conversation_id, role, content, parent=None):
    message = Message(conversation_id=conversation_id, role=role, content=content, parent_id=parent)
    time.sleep(0.002)   # distinct creation times: siblings are ordered by them
    return store.conversations.add_message(message)


def conversation(store, title="chat"):
    return store.conversations.create(Conversation(title=title, settings={"system_prompt": "Be brief."}))


def by_ids(pairs):
    return {(p.chosen_id, p.rejected_id): p for p in pairs}


def thumbed_siblings(store, prompt="Explain DNS.", texts=("a", "b")):
    """A conversation where ▲ a and ▼ b answer ``prompt``: (conversation, a, b)."""
    c = conversation(store)
    q = add(store, c.id, "user", prompt)
    a = add(store, c.id, "assistant", texts[0], q.id)
    b = add(store, c.id, "assistant", texts[1], q.id)
    store.conversations.set_thumb(c.id, a.id, 1)
    store.conversations.set_thumb(c.id, b.id, -1)
    return c, a, b


@pytest.fixture
def consenting(store):
    store.consent.set("personalise", True)
    time.sleep(0.002)
    return store


def test_every_source_puts_the_preferred_reply_on_the_chosen_side(consenting):
    store = consenting
    c = conversation(store)
    # Compare: two replies side by side; the right one is picked (-1), then a second
    # comparison where the left one is picked (+1).
    q1 = add(store, c.id, "user", "Explain DNS.")
    left = add(store, c.id, "assistant", "LEFT reply about DNS", q1.id)
    right = add(store, c.id, "assistant", "RIGHT reply about DNS", q1.id)
    store.conversations.record_pick(c.id, left.id, right.id, -1)
    q2 = add(store, c.id, "user", "Explain TCP.", right.id)
    left2 = add(store, c.id, "assistant", "LEFT reply about TCP", q2.id)
    right2 = add(store, c.id, "assistant", "RIGHT reply about TCP", q2.id)
    store.conversations.record_pick(c.id, left2.id, right2.id, +1)
    # Thumbs: ▲ on the second of two siblings, ▼ on the first.
    q3 = add(store, c.id, "user", "Explain UDP.", left2.id)
    bad = add(store, c.id, "assistant", "thumbed down", q3.id)
    good = add(store, c.id, "assistant", "thumbed up", q3.id)
    store.conversations.set_thumb(c.id, good.id, 1)
    store.conversations.set_thumb(c.id, bad.id, -1)
    # Regenerate chain: two replies regenerated away from, the third one continued.
    q4 = add(store, c.id, "user", "Explain HTTP.", good.id)
    away1 = add(store, c.id, "assistant", "first try", q4.id)
    away2 = add(store, c.id, "assistant", "second try", q4.id)
    kept = add(store, c.id, "assistant", "third try, kept", q4.id)
    add(store, c.id, "user", "Thanks, and HTTPS?", kept.id)

    pairs, report = build_pairs(store.training.rows())
    found = by_ids(pairs)
    assert found[(right.id, left.id)].source == "pick"
    assert found[(right.id, left.id)].chosen == "RIGHT reply about DNS"
    assert found[(right.id, left.id)].rejected == "LEFT reply about DNS"
    assert found[(left2.id, right2.id)].chosen == "LEFT reply about TCP"
    assert found[(good.id, bad.id)].source == "thumbs"
    assert found[(good.id, bad.id)].chosen == "thumbed up"
    assert found[(kept.id, away1.id)].source == "regenerate"
    assert found[(kept.id, away2.id)].rejected == "second try"
    # Nothing ever comes out the other way round.
    assert not {(r, c_) for c_, r in found} & set(found)
    assert len(pairs) == 5 and report.by_source == {"pick": 2, "thumbs": 1, "regenerate": 2}
    # ε: explicit small, inferred larger but capped.
    config = PairConfig()
    assert found[(good.id, bad.id)].epsilon == config.epsilon_thumbs
    assert found[(kept.id, away1.id)].epsilon == config.epsilon_regenerate <= 0.45
    # The prompt is the conversation up to the user turn both replies answer.
    prompt = found[(good.id, bad.id)].prompt
    assert prompt[0] == {"role": "system", "content": "Be brief."}
    assert prompt[-1] == {"role": "user", "content": "Explain UDP."}
    assert [m["content"] for m in prompt[1:]] == ["Explain DNS.", "RIGHT reply about DNS",
                                                  "Explain TCP.", "LEFT reply about TCP",
                                                  "Explain UDP."]


def test_reward_model_labels_unlabelled_siblings_with_its_confidence(consenting):
    store = consenting
    c = conversation(store)
    q = add(store, c.id, "user", "Name a colour.")
    a = add(store, c.id, "assistant", "Blue, the colour of a clear sky.", q.id)
    b = add(store, c.id, "assistant", "Blue.", q.id)
    d = add(store, c.id, "assistant", "Gray.", q.id)

    def judge(x, y):   # prefers the longer reply; unsure between equal lengths
        if len(x["content"]) == len(y["content"]):
            return Judgement(0.5)
        return Judgement(0.9 if len(x["content"]) > len(y["content"]) else 0.2)

    pairs, report = build_pairs(store.training.rows(), PairConfig(), judge=judge)
    found = by_ids(pairs)
    assert set(found) == {(a.id, b.id), (a.id, d.id)}
    assert found[(a.id, b.id)].epsilon == pytest.approx(0.1)
    assert found[(a.id, d.id)].epsilon == pytest.approx(0.1)
    assert report.skipped["reward_unsure"] == 1
    # The length report sees that every chosen reply is the longer one.
    assert report.length_bias["reward"]["chosen_longer_share"] == 1.0
    # A very unsure model never gets an ε above the cap.
    pairs, _ = build_pairs(store.training.rows(), PairConfig(min_reward_confidence=0.5),
                           judge=lambda x, y: Judgement(0.52))
    assert pairs and max(p.epsilon for p in pairs) <= 0.45
    # A very sure model is never surer than the user's own thumbs (nor outranks them).
    pairs, _ = build_pairs(store.training.rows(), judge=lambda x, y: Judgement(0.999))
    assert pairs and min(p.epsilon for p in pairs) == pytest.approx(PairConfig().epsilon_thumbs)
    # Two replies the user picked as a tie: the model does not order them.
    store.conversations.record_pick(c.id, a.id, b.id, 0)
    assert set(by_ids(build_pairs(store.training.rows(), judge=judge)[0])) == {(a.id, d.id)}
    # Nor does the regenerate rule once the chat goes on from one of them (it made
    # "b ≻ a" of the user's tie).
    add(store, c.id, "user", "Thanks. And another?", b.id)
    pairs, report = build_pairs(store.training.rows())
    assert frozenset((a.id, b.id)) not in {frozenset((p.chosen_id, p.rejected_id)) for p in pairs}
    assert report.skipped["regenerate_picked_tie"] == 1


def test_an_explicit_label_beats_a_disagreeing_inferred_one_and_equals_cancel(consenting):
    store = consenting
    c = conversation(store)
    q = add(store, c.id, "user", "Hello?")
    first = add(store, c.id, "assistant", "first", q.id)
    second = add(store, c.id, "assistant", "second", q.id)
    add(store, c.id, "user", "go on", second.id)         # regenerate says second ≻ first
    store.conversations.set_thumb(c.id, first.id, 1)      # thumbs say first ≻ second
    store.conversations.set_thumb(c.id, second.id, -1)
    pairs, report = build_pairs(store.training.rows())
    assert [(p.chosen_id, p.source) for p in pairs] == [(first.id, "thumbs")]
    assert report.conflicts == 1
    # Labels as sure of themselves (the same ε) that disagree cancel: no pair.
    pairs, report = build_pairs(store.training.rows(), PairConfig(epsilon_regenerate=0.10))
    assert pairs == [] and report.skipped["conflicting_labels"] == 1
    # Two picks the other way round: the later one stands.
    store.conversations.record_pick(c.id, first.id, second.id, +1)
    store.conversations.record_pick(c.id, first.id, second.id, -1)
    pairs, _ = build_pairs(store.training.rows())
    assert [(p.chosen_id, p.source) for p in pairs] == [(second.id, "pick")]


def test_only_what_was_written_while_personalisation_was_on(store):
    c, x, y = thumbed_siblings(store, "Before consent", ("x", "y"))
    assert store.training.rows()["messages"] == []          # consent never given
    store.consent.set("personalise", True)
    time.sleep(0.002)
    assert build_pairs(store.training.rows())[0] == []      # written before it: not used
    q2 = add(store, c.id, "user", "After consent", y.id)
    a = add(store, c.id, "assistant", "a", q2.id)
    b = add(store, c.id, "assistant", "b", q2.id)
    store.conversations.set_thumb(c.id, a.id, 1)
    store.conversations.set_thumb(c.id, b.id, -1)
    pairs, report = build_pairs(store.training.rows())
    # The earlier turns were written without consent, so the context is incomplete.
    assert pairs == [] and report.skipped["context_not_available"] == 1
    c2 = conversation(store, "new")
    q3 = add(store, c2.id, "user", "Fresh start")
    a3 = add(store, c2.id, "assistant", "good", q3.id)
    b3 = add(store, c2.id, "assistant", "bad", q3.id)
    store.conversations.set_thumb(c2.id, a3.id, 1)
    store.conversations.set_thumb(c2.id, b3.id, -1)
    assert [p.chosen_id for p in build_pairs(store.training.rows())[0]] == [a3.id]
    store.consent.set("personalise", False)
    time.sleep(0.002)
    assert store.training.rows()["messages"] == []          # off now: nothing at all


def test_a_label_changed_while_personalisation_was_off_is_not_trained_on(consenting):
    """The latest word on a label wins, and counts only if given with the consent on: a
    thumb or pick reversed while it was off must not be trained on as it was before."""
    store = consenting
    c, a, b = thumbed_siblings(store)
    q2 = add(store, c.id, "user", "Explain TCP.", a.id)
    left = add(store, c.id, "assistant", "left", q2.id)
    right = add(store, c.id, "assistant", "right", q2.id)
    store.conversations.record_pick(c.id, left.id, right.id, +1)
    assert {(p.chosen_id, p.source) for p in build_pairs(store.training.rows())[0]} == \
        {(a.id, "thumbs"), (left.id, "pick")}
    store.consent.set("personalise", False)
    time.sleep(0.002)
    store.conversations.set_thumb(c.id, a.id, -1)                 # the user changed their mind
    store.conversations.set_thumb(c.id, b.id, 1)
    store.conversations.record_pick(c.id, right.id, left.id, +1)  # sides swapped, right kept
    store.conversations.set_thumb(c.id, left.id, 0)               # a thumb cleared: no label
    time.sleep(0.002)
    store.consent.set("personalise", True)
    time.sleep(0.002)
    pairs, _ = build_pairs(store.training.rows())
    assert pairs == []           # neither the old labels nor the ones given without consent
    # ... and the job can say why: the latest word on each label, counted by kind.
    assert store.training.rows()["feedback_while_off"] == [{"kind": "pick", "labels": 1},
                                                           {"kind": "thumb", "labels": 2}]
    store.conversations.set_thumb(c.id, b.id, 1)                  # said again, with consent
    store.conversations.set_thumb(c.id, a.id, -1)
    assert [(p.chosen_id, p.source) for p in build_pairs(store.training.rows())[0]] == [(b.id, "thumbs")]


def test_incognito_chats_never_reach_the_pairs(consenting):
    store = consenting
    secret = store.conversations.create(Conversation(title="secret", incognito=True))
    q = add(store, secret.id, "user", "private")
    a = add(store, secret.id, "assistant", "one", q.id)
    b = add(store, secret.id, "assistant", "two", q.id)
    store.conversations.set_thumb(secret.id, a.id, 1)
    store.conversations.set_thumb(secret.id, b.id, -1)
    rows = store.training.rows()
    assert rows["messages"] == [] and build_pairs(rows)[0] == []


def test_imported_research_picks_only_when_asked(consenting):
    store = consenting
    assert store._rows("SELECT 1 FROM information_schema.tables WHERE table_name = 'research_feedback'")

    insert_study_pick(store)
    assert build_pairs(store.training.rows())[0] == []
    pairs, report = build_pairs(store.training.rows(include_imported=True),
                                PairConfig(include_imported=True))
    assert [(p.chosen, p.rejected, p.source) for p in pairs] == [
        ("RIGHT study answer", "LEFT study answer", "imported")]
    # Under the app's system prompt, as live pairs: without one the chat template puts in
    # the base model's own, which the app never sends.
    assert pairs[0].prompt == ({"role": "system", "content": DEFAULT_SYSTEM_PROMPT},
                               {"role": "user", "content": "Which is better?"})


def test_a_reply_cut_short_is_marked_unfinished(consenting):
    """A reply the user stopped, or one that ran into its token limit, did not end by
    itself: DPO must not teach the end-of-turn token after it."""
    store = consenting
    c = conversation(store)
    q = add(store, c.id, "user", "Explain DNS.")
    stopped = store.conversations.add_message(Message(c.id, "assistant", "DNS maps names", parent_id=q.id,
                                                      finish_reason="cancelled"))
    whole = add(store, c.id, "assistant", "DNS maps names to addresses.", q.id)
    capped = store.conversations.add_message(Message(c.id, "assistant", "DNS is a", parent_id=q.id,
                                                     finish_reason="length"))
    store.conversations.set_thumb(c.id, stopped.id, 1)
    store.conversations.set_thumb(c.id, whole.id, -1)
    store.conversations.set_thumb(c.id, capped.id, -1)
    pairs = by_ids(build_pairs(store.training.rows())[0])
    first, second = pairs[(stopped.id, whole.id)], pairs[(stopped.id, capped.id)]
    assert (first.chosen_finished, first.rejected_finished) == (False, True)
    assert (second.chosen_finished, second.rejected_finished) == (False, False)


def test_duplicates_max_pairs_and_fingerprint(consenting):
    store = consenting
    c = conversation(store)
    ids = []
    for i in range(3):
        q = add(store, c.id, "user", f"question {i}")
        good = add(store, c.id, "assistant", "same good text", q.id)
        bad = add(store, c.id, "assistant", "same bad text", q.id)
        store.conversations.set_thumb(c.id, good.id, 1)
        store.conversations.set_thumb(c.id, bad.id, -1)
        ids.append(good.id)
    pairs, report = build_pairs(store.training.rows())
    assert len(pairs) == 3            # same replies, different prompts: distinct pairs
    first = fingerprint(pairs)
    assert fingerprint(build_pairs(store.training.rows())[0]) == first
    pairs, report = build_pairs(store.training.rows(), PairConfig(max_pairs=2))
    assert len(pairs) == 2 and report.dropped_over_max == 1
    assert [p.prompt[-1]["content"] for p in pairs] == ["question 2", "question 1"]   # the newest
    assert fingerprint(pairs) != first
    # The same prompt, replies and thumbs in another chat: one pair, the other a duplicate.
    thumbed_siblings(store, "question 0", ("same good text", "same bad text"))
    pairs, report = build_pairs(store.training.rows())
    assert len(pairs) == 3 and report.duplicates == 1


def test_the_run_fingerprint_changes_with_the_base_model_and_what_shapes_the_adapter(consenting, tmp_path):
    """The same pairs for another chat model are something new to learn (an adapter fits
    one base model): a user who switched models would otherwise be told "nothing new"
    every night. Settings that only change how a run goes (progress, threads) are not."""
    from align.dpo import DPOSettings
    from align.nightly import NightlyConfig, run_fingerprint
    store = consenting
    c, a, b = thumbed_siblings(store)
    pairs, _ = build_pairs(store.training.rows())
    config = NightlyConfig(tmp_path, dpo=DPOSettings())
    stamp = run_fingerprint(pairs, "/models/SmolLM2-135M.gguf", config)
    assert run_fingerprint(pairs, "/elsewhere/SmolLM2-135M.gguf", config) == stamp
    # a model file that exists is named as the adapter's manifest names its base
    model = tmp_path / "SmolLM2-135M.gguf"
    model.write_bytes(b"GGUF" + bytes(60))
    replaced = run_fingerprint(pairs, str(model), config)
    model.write_bytes(b"GGUF" + bytes(90))          # another file under the same name
    assert run_fingerprint(pairs, str(model), config) != replaced
    assert run_fingerprint(pairs, "/models/Qwen3-0.6B.gguf", config) != stamp
    assert run_fingerprint(pairs, "/models/SmolLM2-135M.gguf",
                           NightlyConfig(tmp_path, dpo=DPOSettings(threads=1, progress=True))) == stamp
    assert run_fingerprint(pairs, "/models/SmolLM2-135M.gguf",
                           NightlyConfig(tmp_path, dpo=DPOSettings(beta=0.2))) != stamp
    # A gate loosened after a refusal: the same adapter may now pass ("nothing new" hid it).
    from align.gate import GateConfig
    assert run_fingerprint(pairs, "/models/SmolLM2-135M.gguf", NightlyConfig(
        tmp_path, dpo=DPOSettings(), gate=GateConfig(max_kl_per_token=1.0))) != stamp


def test_a_changed_system_prompt_is_something_new_and_identical_replies_are_counted(consenting):
    """The fingerprint named pairs by ids and labels only: a conversation's system prompt
    changed afterwards (every prompt of its pairs with it) was "nothing new to learn"
    every night, and the adapter stayed trained on the old one. And the report's count
    of identical replies was overwritten by the other reasons."""
    import dataclasses
    store = consenting
    thumbed_siblings(store)
    c = conversation(store)
    q = add(store, c.id, "user", "Say hi.")
    same = [add(store, c.id, "assistant", "hi", q.id) for _ in range(2)]
    store.conversations.set_thumb(c.id, same[0].id, 1)
    store.conversations.set_thumb(c.id, same[1].id, -1)
    pairs, report = build_pairs(store.training.rows())
    assert len(pairs) == 1 and report.skipped.get("identical_replies") == 1
    pair = pairs[0]
    other_system = ({"role": "system", "content": "Answer in French."},) + tuple(pair.prompt[1:])
    assert pair.prompt[0]["role"] == "system" and pair.prompt[0]["content"] != other_system[0]["content"]
    assert fingerprint([dataclasses.replace(pair, prompt=other_system)]) != fingerprint(pairs)
    assert fingerprint([dataclasses.replace(pair, chosen=pair.chosen + "!")]) != fingerprint(pairs)
    assert fingerprint([dataclasses.replace(pair)]) == fingerprint(pairs)


def test_a_changed_split_never_resumes_weights_that_learned_from_the_held_out_side(consenting,
                                                                                   tmp_path):
    """An interrupted run resumes from its work folder. The folder was named by all the
    pairs, not by the side trained on: with the gate's seed or held-out share changed,
    the next night resumed weights that had learned from conversations now held out."""
    from align.dpo import DPOSettings
    from align.gate import GateConfig, split_by_conversation
    from align.nightly import work_folder
    from app.models import default_model_path
    store = consenting
    for i in range(8):
        thumbed_siblings(store, prompt=f"Question {i}?", texts=(f"good {i}", f"bad {i}"))
    pairs, _ = build_pairs(store.training.rows())
    model, dpo = default_model_path(), DPOSettings()
    trained_on = {seed: {p.conversation_id for p in split_by_conversation(pairs, GateConfig(seed=seed))[0]}
                  for seed in range(6)}
    other = next(s for s in trained_on if trained_on[s] != trained_on[0])
    folder = {seed: work_folder(tmp_path, pairs, GateConfig(seed=seed), model, dpo)
              for seed in (0, other)}
    assert folder[0] != folder[other]              # another split: not resumed
    assert work_folder(tmp_path, pairs, GateConfig(seed=0), model, dpo) == folder[0]   # resumed


def test_a_snapshot_from_an_app_started_before_an_upgrade_is_read(consenting, tmp_path):
    """The job reads what the open app wrote: an app started before the job was upgraded
    writes the tables it knew (no feedback_while_off), and the job failed on the missing
    table (CatalogException) instead of reading it as empty."""
    import secrets
    from feedback_store.connection import open_encrypted
    from feedback_store.training import read_snapshot
    store = consenting
    thumbed_siblings(store)
    key = secrets.token_hex(32)
    path = tmp_path / "snapshot.db"
    store.training.write_snapshot(path, key)
    con = open_encrypted(path, key)
    con.execute("DROP TABLE feedback_while_off")
    con.close()
    rows = read_snapshot(path, key)
    assert rows["feedback_while_off"] == [] and len(rows["feedback"]) == 2
    assert [p.source for p in build_pairs(rows)[0]] == ["thumbs"]
