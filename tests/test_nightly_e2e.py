"""End to end on SmolLM2, trained once for the whole module: `align --nightly` runs beside
an open app (a real FeedbackStore served by a TrainingLink in this process), learns from a
handful of liked/disliked replies, and publishes a GGUF adapter that llama.cpp loads and
that moves the log-prob margin of the chosen replies up — measured in llama.cpp on an F16
copy of the base. Then: the gate refuses the opposite adapter and an overdriven one, the
chat engine picks a new version up without a restart, a second run with the app closed
finds nothing new, deleting a conversation retires the adapter, and *Delete everything*
leaves no file."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT
from feedback_store.settings import SettingsManager
from nightly_support import (SYSTEM, job_env, last_json, require_training, seed_home,
                             smollm2_checkpoint, smollm2_f16, smollm2_gguf)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    require_training()
    from app.training_link import TrainingLink
    from feedback_store import FeedbackStore
    checkpoint, f16, base = smollm2_checkpoint(), smollm2_f16(), smollm2_gguf()
    home = tmp_path_factory.mktemp("nightly") / "glance-home"
    ids = seed_home(home)
    store = FeedbackStore.open(home)
    link = TrainingLink(store, model_path=lambda: str(base)).start()
    try:
        done = subprocess.run([sys.executable, "-m", "align.cli", "--nightly", "--json"],
                              capture_output=True, text=True, timeout=1500, cwd=ROOT,
                              env=job_env(home))
        assert done.returncode == 0, done.stderr[-3000:]
        result = last_json(done.stdout)
        yield {"home": home, "store": store, "link": link, "result": result, "ids": ids,
               "checkpoint": checkpoint, "f16": f16, "base": base, "stderr": done.stderr}
    finally:
        link.stop()
        if not store.closed:
            store.close()


def version_dir(run):
    return run["home"] / "adapters" / run["result"]["adapter"]


def test_the_run_trained_published_and_recorded_through_the_app(run):
    result, store, link = run["result"], run["store"], run["link"]
    assert result["via"] == "app" and result["trained"], result.get("message")
    assert result["status"] == "published" and result["published"], result["message"]
    assert result["pairs"] == {"thumbs": 8}
    assert result["adapter"] == "v0001" and (version_dir(run) / "adapter.gguf").exists()
    assert link.served.count("snapshot") == 1 and link.served.count("finish") == 1
    # Told again once the version is in use (it is recorded before: the label lagged).
    assert link.served[link.served.index("finish"):].count("adapters_changed") == 1
    # The job's log says what it does in sentences, not a library bar per model load.
    assert "Training on" in run["stderr"] and "Loading weights" not in run["stderr"], run["stderr"]
    gate = result["eval"]["reward"]
    assert gate["heldout_pairs"] >= 1 and gate["implicit_reward_accuracy"] > 0.5
    # The version says how far its file could be checked against the weights.
    kept = json.loads((version_dir(run) / "manifest.json").read_text())["gate"]["file_check"]
    assert kept["pairs"] >= 1 and 1 <= kept["checked"] <= kept["pairs"] and kept["noise_rms"] > 0
    drift = result["eval"]["drift"]
    assert drift["kl_per_token"] <= result["eval"]["config"]["max_kl_per_token"]
    # the drift samples answer held-out prompts first; the report says how many of each
    assert drift["prompts_heldout"] >= 1
    assert drift["prompts_heldout"] + drift["prompts_train"] == drift["samples"]
    runs = store.training.runs()
    assert runs[0]["status"] == "published" and runs[0]["adapter_version"] == "v0001"
    used = store.training.pairs_used(result["run_id"])
    assert len(used) == 8 and {u["split"] for u in used} == {"train", "heldout"}
    assert {v["version"]: v["status"] for v in store.training.adapter_versions()} == {"v0001": "published"}
    # Nothing left behind but the published version.
    assert not (run["home"] / "training" / "work").exists() or \
        not any((run["home"] / "training" / "work").iterdir())
    assert not any((run["home"] / "training" / "snapshots").iterdir())


def completion_logp(llm, prompt_tokens, completion_tokens):
    """log p(completion | prompt) in llama.cpp, computed here on its own (the gate judges
    exported files with align.gate.completion_logp: this test must not share it)."""
    llm.reset()
    llm.eval(list(prompt_tokens) + list(completion_tokens))
    rows = np.asarray(llm.scores[len(prompt_tokens) - 1: llm.n_tokens - 1], dtype=np.float64)
    logp = rows - np.logaddexp.reduce(rows, axis=1, keepdims=True)
    return float(logp[np.arange(len(completion_tokens)), list(completion_tokens)].sum())


def test_llama_cpp_loads_the_adapter_and_it_raises_the_chosen_margin(run):
    from llama_cpp import Llama
    from align.gate import prompt_tokens
    adapter = version_dir(run) / "adapter.gguf"
    common = dict(n_ctx=256, n_threads=2, n_threads_batch=2, verbose=False, logits_all=True)
    base = Llama(str(run["f16"]), **common)
    tuned = Llama(str(run["f16"]), lora_path=str(adapter), **common)
    try:
        moved = []
        for topic in ("tea", "rain", "maps", "clocks"):
            messages = [{"role": "system", "content": SYSTEM},
                        {"role": "user", "content": f"Tell me one fact about {topic}."}]
            prompt = prompt_tokens(base, messages)
            good = base.tokenize(f"Certainly! Here is a fact: {topic} have a long and interesting "
                                 "history.<|im_end|>".encode(), add_bos=False, special=True)
            bad = base.tokenize(f"I do not know much about {topic}, sorry. Maybe ask someone else "
                                f"about {topic}.<|im_end|>".encode(), add_bos=False, special=True)
            margin = {name: completion_logp(llm, prompt, good) - completion_logp(llm, prompt, bad)
                      for name, llm in (("base", base), ("tuned", tuned))}
            moved.append(margin["tuned"] - margin["base"])
    finally:
        tuned.close()
        base.close()
    assert all(m > 0 for m in moved), moved
    assert np.mean(moved) > 1.0, moved


@pytest.mark.timeout(900)
def test_the_gate_refuses_the_opposite_adapter_and_an_overdriven_one(run, tmp_path):
    from safetensors.numpy import load_file, save_file
    from align.dpo import DPOSettings, load_scorer
    from align.export_gguf import ExportConfig, export_adapter
    from align.gate import GateConfig, evaluate, split_by_conversation
    from align.pairs import build_pairs

    settings = json.loads((run["home"] / "training" / "settings.json").read_text())
    gate_config = GateConfig(**settings["gate"])
    dpo = DPOSettings(**settings["dpo"])
    pairs, _ = build_pairs(run["store"].training.rows())
    train, heldout = split_by_conversation(pairs, gate_config)
    assert heldout
    prompts = [p.prompt for p in heldout + train][:gate_config.samples]
    published = version_dir(run) / "peft"

    # The opposite adapter: every lora_B negated, in torch and in the GGUF.
    opposite = tmp_path / "opposite"
    shutil.copytree(published, opposite)
    state = load_file(opposite / "adapter_model.safetensors")
    save_file({k: (-v if "lora_B" in k else v) for k, v in state.items()},
              str(opposite / "adapter_model.safetensors"))
    export_adapter(opposite, tmp_path / "opposite.gguf", run["checkpoint"])
    scorer, tokenizer = load_scorer(run["checkpoint"], opposite, dpo)
    report = evaluate(scorer, tokenizer, heldout, run["base"], tmp_path / "opposite.gguf",
                      prompts, dpo, gate_config)
    assert report["reward"]["implicit_reward_accuracy"] < 0.5
    assert not report["publish"] and any("not better" in r for r in report["reasons"])

    # The published adapter turned up 10x: better on the pairs, but far from the base model.
    export_adapter(published, tmp_path / "loud.gguf", run["checkpoint"], ExportConfig(scale=10.0))
    scorer, tokenizer = load_scorer(run["checkpoint"], published, dpo)
    report = evaluate(scorer, tokenizer, heldout, run["base"], tmp_path / "loud.gguf",
                      prompts, dpo, gate_config)
    assert report["reward"]["implicit_reward_accuracy"] > 0.5
    assert not report["publish"] and any("drifts too far" in r or "length" in r
                                         for r in report["reasons"]), report["reasons"]
    assert report["reward"]["published"]["slope"] > 2      # the file does 10x what the weights do

    # The published weights, exported the wrong way round: the trained adapter is better,
    # the file the chat would use is worse. Judged on the weights alone, it was published.
    export_adapter(published, tmp_path / "flipped.gguf", run["checkpoint"], ExportConfig(scale=-1.0))
    report = evaluate(scorer, tokenizer, heldout, run["base"], tmp_path / "flipped.gguf",
                      prompts, dpo, gate_config)
    assert report["reward"]["implicit_reward_accuracy"] > 0.5
    assert report["reward"]["published"]["slope"] < 0
    # (judged on the pairs it moves at least 3x the arithmetic's noise: this adapter has some)
    published = report["reward"]["published"]
    strong = [h for h in published["trained_h"] if abs(h) >= 3 * published["noise_rms"]]
    assert published["checked"] == len(strong) >= 1
    assert not report["publish"] and any("export does not carry" in r
                                         for r in report["reasons"]), report["reasons"]
    # And the file as published does what the weights do.
    report = evaluate(scorer, tokenizer, heldout, run["base"], version_dir(run) / "adapter.gguf",
                      prompts, dpo, gate_config)
    assert report["publish"], report["reasons"]
    assert 0.5 < report["reward"]["published"]["slope"] < 2   # (a strongly trained adapter)
    assert report["reward"]["published"]["same_sign_share"] == 1.0


def test_the_chat_engine_uses_a_new_version_without_a_restart_and_a_toggle_for_the_base(run, tmp_path):
    from align.adapters import AdapterConfig, publish, set_active, base_identity
    from app.engine import ChatEngine, GenerationSettings
    adapters = tmp_path / "adapters"
    engine = ChatEngine(run["base"])
    engine.use_adapters(adapters)            # nothing published there yet
    settings = GenerationSettings(seed=3, temperature=0.0, max_tokens=24)
    # A topic it was trained on: what the adapter changes shows in the first words (on an
    # unseen topic the capped loss of noisy-label DPO may leave 24 greedy tokens as they were).
    messages = [{"role": "system", "content": SYSTEM},
                {"role": "user", "content": "Tell me one fact about tea."}]
    try:
        plain = engine.generate(messages, settings).text
        assert engine.adapter_version is None
        version = publish(AdapterConfig(adapters), version_dir(run) / "adapter.gguf", None,
                          {"base": base_identity(run["base"])})
        tuned = engine.generate(messages, settings).text          # same engine, no reload
        assert engine.adapter_version == version and tuned != plain
        engine.set_adapter_enabled(False)
        assert engine.generate(messages, settings).text == plain
        assert engine.adapter_version is None
        engine.set_adapter_enabled(True)
        assert engine.generate(messages, settings).text == tuned
        set_active(AdapterConfig(adapters), None)                    # rolled back to the base
        assert engine.generate(messages, settings).text == plain
    finally:
        engine.close()


def test_glance_chat_answers_with_the_adapter_as_the_window_does(run, tmp_path):
    """`glance chat` always answered with the base model, whatever the window used."""
    from align.adapters import AdapterConfig, base_identity, publish
    from conftest import run_glance
    from feedback_store import FeedbackStore
    home = tmp_path / "home"
    version = publish(AdapterConfig(home / "adapters"), version_dir(run) / "adapter.gguf", None,
                      {"base": base_identity(run["base"])})

    def chat():
        done = run_glance("chat", "--prompt", "Tell me one fact about tea.", "--seed", "3",
                          "--temperature", "0", "--max-tokens", "24", "--json", home=home)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)
    tuned = chat()
    assert tuned["adapter"] == version
    with FeedbackStore.open(home) as store:
        store.settings.set("use_personal_adapter", False)      # the window's Personal off
    plain = chat()
    assert plain["adapter"] is None and plain["reply"] != tuned["reply"]
    # The doctor says which model the adapter is for, not that the chat answers with it.
    doctor = run_glance("doctor", home=home).stdout
    assert f"Adapter:  {version}, for {Path(run['base']).name} (the chat answers with it on " \
        "that model while Personal is on)" in doctor, doctor


def test_the_window_shows_the_version_toggles_the_base_and_takes_a_new_one_without_restart(
        run, qtbot, store, engine):
    from align.adapters import AdapterConfig, base_identity, publish
    from align.ipc import socket_path
    from app.ui.main_window import MainWindow
    from conftest import quick_settings
    from test_ui import send_by_keyboard
    config = AdapterConfig(store.data_dir / "adapters")
    info = {"base": base_identity(engine.model_info["path"]), "pairs": 8}
    first = publish(config, version_dir(run) / "adapter.gguf", None, info)
    store.settings.set("generation", quick_settings(temperature=0.0).to_dict())
    window = MainWindow(store, engine)
    qtbot.addWidget(window)
    window.show()
    try:
        assert socket_path(store.data_dir).exists()          # the nightly job can reach the app
        assert window.adapter_label.text() == f"Personal {first}"
        assert window.adapter_action.isEnabled() and window.adapter_action.isChecked()
        send_by_keyboard(qtbot, window, "Tell me one fact about bees.")
        assert engine.adapter_version == first

        window.adapter_action.trigger()                       # the toggle: chat with the base
        assert window.adapter_label.text() == f"Base model (personal {first} off)"
        send_by_keyboard(qtbot, window, "And one about kites.")
        assert engine.adapter_version is None
        store.flush()
        assert SettingsManager(store).get("use_personal_adapter") is False   # remembered in the file

        window.adapter_action.trigger()
        second = publish(config, version_dir(run) / "adapter.gguf", None, info)  # a new night
        send_by_keyboard(qtbot, window, "And one about rain.")
        assert engine.adapter_version == second != first     # same window, no restart
        assert window.adapter_label.text() == f"Personal {second}"
    finally:
        window.close()
        engine.use_adapters(None)
        engine.set_adapter_enabled(True)
    assert not socket_path(store.data_dir).exists()


def test_app_closed_the_same_pairs_again_is_nothing_new(run):
    run["link"].stop()
    run["store"].close()
    done = subprocess.run([sys.executable, "-m", "align.cli", "--nightly", "--json"],
                          capture_output=True, text=True, timeout=600, cwd=ROOT, env=job_env(run["home"]))
    assert done.returncode == 0, done.stderr
    result = last_json(done.stdout)
    assert result["via"] == "direct" and result["status"] == "nothing_new"
    assert "same 8 pairs" in result["message"] and not result["trained"]


def test_deleting_a_conversation_retires_the_adapter_and_delete_everything_leaves_nothing(run):
    from app.session import AppSession
    from feedback_store import FeedbackStore
    from feedback_store.privacy import delete_everything
    home = run["home"]
    store = FeedbackStore.open(home)
    used = store.training.pairs_used(run["result"]["run_id"])
    trained_on = next(u["conversation_id"] for u in used if u["split"] == "train")
    AppSession(store).delete_conversation(trained_on)     # what the window runs
    assert not version_dir(run).exists()
    assert json.loads((home / "adapters" / "active.json").read_text())["version"] is None
    assert {v["version"]: v["status"] for v in store.training.adapter_versions()}["v0001"] == "retired"
    delete_everything(home, store)
    assert not home.exists() or list(home.rglob("*")) == []
