"""The DPO stage: the trainer's loss is the noisy-label DPO + NLL loss with each pair's own ε
(matched to a hand computation), the split forward equals the plain one, an interrupted
run resumes from its checkpoint, and the job is polite (priority, lock, battery)."""
import importlib.util
import math
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from align.pairs import Pair
from conftest import ROOT, require
from nightly_support import smollm2_checkpoint


def pair(i, epsilon, chosen="An apple is a fruit.", rejected="A rock is not food at all."):
    return Pair(prompt=({"role": "system", "content": "Be brief."},
                        {"role": "user", "content": f"Name a fruit ({i})."}),
                chosen=chosen, rejected=rejected, source="thumbs", epsilon=epsilon,
                conversation_id=f"c{i}", prompt_id=f"p{i}", chosen_id=f"g{i}", rejected_id=f"b{i}")


@pytest.fixture(scope="module")
def checkpoint():
    return smollm2_checkpoint()


def test_a_long_prompt_keeps_the_app_layout_and_a_cut_reply_has_no_end_of_turn(checkpoint):
    """Training must see what the app sends: the app leaves whole old turns out of a full
    context (system prompt and newest message stay). Cutting the rendered prompt's tokens
    dropped the system prompt and began mid-sentence. A reply that was cut short gets no
    end-of-turn token, so the adapter never learns to stop there."""
    from transformers import AutoTokenizer
    from align.dpo import DPOSettings, tokenize_pair
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    settings = DPOSettings(max_prompt_tokens=120)
    history = []
    for i in range(6):
        history += [{"role": "user", "content": f"Tell me about river number {i}. " * 4},
                    {"role": "assistant", "content": f"River {i} is long and wide. " * 4}]
    prompt = ({"role": "system", "content": "You are Glance."}, *history,
              {"role": "user", "content": "Which river was longest?"})
    long_pair = Pair(prompt=prompt, chosen="River 2.", rejected="I do not know.", source="thumbs",
                     epsilon=0.1, conversation_id="c", prompt_id="p", chosen_id="g",
                     rejected_id="b", rejected_finished=False)
    example = tokenize_pair(long_pair, tokenizer, settings)
    text = tokenizer.decode(example["prompt_ids"])
    assert len(example["prompt_ids"]) <= 120
    assert text.startswith("<|im_start|>system\nYou are Glance.<|im_end|>\n<|im_start|>user\n")
    assert text.endswith("Which river was longest?<|im_end|>\n<|im_start|>assistant\n")
    assert "River 5 is long" in text and "river number 0" not in text   # whole turns left out
    assert tokenizer.decode(example["chosen_ids"]).endswith("River 2.<|im_end|>\n")
    assert tokenizer.decode(example["rejected_ids"]).endswith("I do not know.")

    alone = Pair(prompt=(prompt[0], {"role": "user", "content": "word " * 300 + "the end?"}),
                 chosen="Yes.", rejected="No.", source="thumbs", epsilon=0.1,
                 conversation_id="c", prompt_id="p", chosen_id="g", rejected_id="b")
    example = tokenize_pair(alone, tokenizer, settings)
    text = tokenizer.decode(example["prompt_ids"])
    assert len(example["prompt_ids"]) <= 120
    assert text.startswith("<|im_start|>system\nYou are Glance.") and "the end?<|im_end|>" in text
    # A system prompt too long on its own (it can be edited in the app): the newest message
    # keeps its end (a quarter of the room at least), the system prompt loses its end.
    wordy = Pair(prompt=({"role": "system", "content": "Always be kind. " * 100},
                         {"role": "user", "content": "What is two and two?"}),
                 chosen="Four.", rejected="Five.", source="thumbs", epsilon=0.1,
                 conversation_id="c", prompt_id="p", chosen_id="g", rejected_id="b")
    example = tokenize_pair(wordy, tokenizer, settings)
    text = tokenizer.decode(example["prompt_ids"])
    assert len(example["prompt_ids"]) <= 120
    assert text.startswith("<|im_start|>system\nAlways be kind.")
    assert text.endswith("What is two and two?<|im_end|>\n<|im_start|>assistant\n")
    empty = Pair(prompt=(prompt[0], {"role": "user", "content": ""}), chosen="Hi.", rejected="Ho.",
                 source="thumbs", epsilon=0.1, conversation_id="c", prompt_id="p",
                 chosen_id="g", rejected_id="b")
    assert tokenize_pair(empty, tokenizer, settings)["prompt_ids"]           # no error


@pytest.mark.timeout(900)
def test_training_reshapes_a_conversation_as_the_app_does_for_its_template(checkpoint):
    """A base model whose template refuses a system role or two user turns in a row (the
    app folds and merges them: align.templates) made every nightly run fail in the
    tokenizer; it now trains on the prompt the app sends."""
    from transformers import AutoTokenizer
    from align.dpo import DPOSettings, tokenize_pair
    from test_engine import GEMMA_2
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    tokenizer.chat_template = GEMMA_2
    stopped = Pair(prompt=({"role": "system", "content": "Be brief."},
                           {"role": "user", "content": "Name a fruit."},
                           {"role": "user", "content": "A red one."}),
                   chosen="An apple.", rejected="A rock.", source="thumbs", epsilon=0.1,
                   conversation_id="c", prompt_id="p", chosen_id="g", rejected_id="b")
    example = tokenize_pair(stopped, tokenizer, DPOSettings())
    text = tokenizer.decode(example["prompt_ids"])
    assert "<start_of_turn>user\nBe brief.\n\nName a fruit.\n\nA red one.<end_of_turn>" in text
    assert text.endswith("<start_of_turn>model\n")
    assert tokenizer.decode(example["chosen_ids"]).startswith("An apple.")


def test_a_noisy_pair_never_pulls_harder_than_a_clean_one_and_stops():
    """ANCHORS: inferred labels are noisy, their weight capped. Robust DPO's division by
    1 − 2ε made a pair at ε 0.45 pull 10× as hard as a pick at h = 0 and keep pulling
    for ever (its loss had no floor). Here, at every margin, an uncertain pair's pull
    towards its label is at most a clean pair's, and it stops where σ(βh) = 1 − ε."""
    import torch
    from align.dpo import noisy_label_dpo_loss
    beta = 0.1
    h = torch.linspace(-60, 60, 241, dtype=torch.float64, requires_grad=True)

    def pull(epsilon):
        loss = noisy_label_dpo_loss(h, torch.full_like(h, epsilon), beta).sum()
        (grad,) = torch.autograd.grad(loss, h)
        return -grad                          # > 0: towards the label
    clean = pull(0.0)
    for epsilon in (0.05, 0.30, 0.45):
        noisy = pull(epsilon)
        assert bool((noisy <= clean + 1e-12).all()), epsilon
        assert float(noisy[120]) == pytest.approx((1 - 2 * epsilon) * float(clean[120]))   # h = 0
        stop = math.log((1 - epsilon) / epsilon) / beta                 # σ(β h) = 1 − ε
        assert float(pull(epsilon)[h.detach() > stop + 1].max()) < 0    # beyond it: pulled back
    floor = noisy_label_dpo_loss(h.detach(), torch.full_like(h, 0.45), beta)
    assert float(floor.min()) > 0                                        # bounded below


def test_trainer_loss_is_noisy_label_dpo_with_each_pairs_own_epsilon(checkpoint, tmp_path):
    import torch
    from align.dpo import DPOSettings, Scorer, make_trainer

    pairs = [pair(0, 0.05), pair(1, 0.30, chosen="A banana.", rejected="Concrete, probably.")]
    settings = DPOSettings(batch_pairs=2, beta=0.1, nll_weight=0.2, progress=False, threads=2)
    trainer = make_trainer(pairs, checkpoint, tmp_path, settings)
    model = trainer.model
    assert trainer.scorer.split > 0          # the fast path is the one under test
    torch.manual_seed(0)
    with torch.no_grad():                    # an adapter that really changes the model
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.02)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    loss = float(trainer.compute_loss(model, batch).detach())

    # By hand: full forward of the whole model, full logits, no trunk split or chunking.
    def sequence_logp(ids, completion, adapter: bool):
        with torch.no_grad():
            if adapter:
                logits = model(input_ids=ids[None]).logits[0]
            else:
                with model.disable_adapter():
                    logits = model(input_ids=ids[None]).logits[0]
        logp = torch.log_softmax(logits.double(), dim=-1)
        total, count = 0.0, 0
        for t in range(1, len(ids)):
            if completion[t]:
                total += float(logp[t - 1, ids[t]])
                count += 1
        return total, count

    expected = []
    for i, p in enumerate(pairs):
        rows = {}
        for side, row in (("c", i), ("r", i + 2)):
            n = int(batch["attention_mask"][row].sum())
            ids, completion = batch["input_ids"][row][:n], batch["completion_mask"][row][:n]
            rows[side] = (sequence_logp(ids, completion, True), sequence_logp(ids, completion, False))
        (pc, count_c), (rc, _) = rows["c"]
        (pr, _), (rr, _) = rows["r"]
        h = (pc - rc) - (pr - rr)
        e, beta = p.epsilon, 0.1
        dpo = (1 - e) * math.log1p(math.exp(-beta * h)) + e * math.log1p(math.exp(beta * h))
        nll = -pc / count_c
        expected.append(dpo + 0.2 * (1 - 2 * e) * nll)
        assert abs(h) > 1e-3          # the margins are not trivially zero
    assert loss == pytest.approx(sum(expected) / 2, abs=1e-5)

    # The same batch with the two ε swapped gives another loss: ε is per pair, not per run.
    swapped = dict(batch, epsilon=batch["epsilon"].flip(0))
    assert abs(float(trainer.compute_loss(model, swapped).detach()) - loss) > 1e-4

    # The split forward (trunk once, top layers twice) equals the whole model's forward.
    plain = Scorer(model, split=0)
    fast_policy, fast_ref, _ = trainer.scorer.logps(batch, policy_grad=False)
    slow_policy, slow_ref, _ = plain.logps(batch, policy_grad=False)
    assert torch.allclose(fast_policy, slow_policy, atol=1e-4)
    assert torch.allclose(fast_ref, slow_ref, atol=1e-4)


@pytest.mark.timeout(900)
def test_an_interrupted_run_resumes_from_its_last_checkpoint(checkpoint, tmp_path):
    from transformers import TrainerCallback
    from align.dpo import DPOSettings, train_dpo

    class Interrupted(Exception):
        pass

    class StopAfterFirstSave(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            raise Interrupted(state.global_step)

    pairs = [pair(i, 0.1) for i in range(3)]
    settings = DPOSettings(batch_pairs=1, epochs=1, checkpoints=3, max_completion_tokens=12,
                           progress=False, threads=2)
    with pytest.raises(Interrupted):
        train_dpo(pairs, checkpoint, tmp_path / "work", settings, callbacks=[StopAfterFirstSave()])
    assert (tmp_path / "work" / "trainer" / "checkpoint-1").is_dir()
    assert not (tmp_path / "work" / "adapter").exists()
    # A later checkpoint the job was killed while writing (trainer_state.json comes last).
    half = tmp_path / "work" / "trainer" / "checkpoint-2"
    shutil.copytree(tmp_path / "work" / "trainer" / "checkpoint-1", half)
    (half / "trainer_state.json").unlink()
    result = train_dpo(pairs, checkpoint, tmp_path / "work", settings, log=lambda m: None)
    assert result.resumed_from_step == 1            # not from the half-written one
    assert result.steps == 3
    assert (result.adapter_dir / "adapter_model.safetensors").exists()


def test_the_job_runs_at_the_lowest_cpu_and_io_priority():
    """In a child process, so the test process keeps its priority."""
    code = textwrap.dedent("""
        import ctypes, json, os, platform
        from align.dpo import lower_priority, _IOPRIO_SET
        done = lower_priority()
        libc = ctypes.CDLL(None, use_errno=True)
        get = {"x86_64": 252, "aarch64": 31, "arm64": 31}.get(platform.machine())
        ioprio = libc.syscall(get, 1, 0) if get else None
        print(json.dumps({"done": done, "nice": os.nice(0), "ioprio": ioprio,
                          "sched": os.sched_getscheduler(0)}))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    import json
    found = json.loads(out.stdout)
    assert found["nice"] == 19
    assert found["sched"] == os.SCHED_IDLE
    require(found["ioprio"] is not None and found["ioprio"] >= 0,
            "ioprio_get is not available on this machine (architecture or kernel), so the "
            "job's IO priority cannot be read back")
    assert found["ioprio"] >> 13 == 3               # IOPRIO_CLASS_IDLE
    assert found["done"]["ioprio"] == "idle"


def test_one_job_at_a_time_and_the_lock_dies_with_its_holder(tmp_path):
    from align.locks import AlreadyRunning, TrainingLock
    from align.nightly import NightlyConfig, run_nightly

    from feedback_store import FeedbackStore
    FeedbackStore.open(tmp_path).close()
    database = (tmp_path / "glance.db").read_bytes()
    lock_path = tmp_path / "training" / "nightly.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from align.locks import TrainingLock
            lock = TrainingLock({str(lock_path)!r}).acquire()
            print("held", flush=True)
            sys.stdin.read()
        """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(AlreadyRunning, match=f"PID {holder.pid}"):
            TrainingLock(lock_path).acquire()
        # A second nightly run stops at once, touching nothing.
        result = run_nightly(NightlyConfig(data_dir=tmp_path), log=lambda m: None)
        assert result["status"] == "skipped" and "Another nightly training" in result["message"]
        assert (tmp_path / "glance.db").read_bytes() == database
    finally:
        holder.kill()
        holder.wait()
    TrainingLock(lock_path).acquire().release()    # the dead holder's lock is gone


def test_battery_detection_reads_the_power_supplies(tmp_path):
    from align.dpo import on_battery

    def supply(name, kind, **files):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "type").write_text(kind + "\n")
        for key, value in files.items():
            (folder / key).write_text(value + "\n")

    supply("AC", "Mains", online="0")
    supply("BAT0", "Battery", status="Discharging")
    assert on_battery(tmp_path) is True
    (tmp_path / "AC" / "online").write_text("1\n")
    assert on_battery(tmp_path) is False
    assert on_battery(tmp_path / "missing") is False
    # No mains supply listed (some laptops): the battery's own status decides.
    (tmp_path / "AC" / "type").write_text("Unknown\n")
    assert on_battery(tmp_path) is True
    (tmp_path / "BAT0" / "status").write_text("Full\n")
    assert on_battery(tmp_path) is False


def test_a_failed_conversion_leaves_no_copy_of_the_model_behind(tmp_path):
    """A conversion that fails (a full disk, a model transformers cannot read) left its
    partial float32 copy, and each night's new try added one more: nothing removed them
    but a conversion that worked."""
    require(importlib.util.find_spec("transformers") is not None, "transformers is missing")
    from align.checkpoint import CheckpointConfig, ensure_checkpoint
    cache = tmp_path / "hf"
    cache.mkdir()
    left = cache / ".0123456789abcdef.tmp-999999999"      # last night's, its process gone
    left.mkdir()
    (left / "model.safetensors").write_bytes(b"\0" * 1024)
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(Exception):
        ensure_checkpoint(broken, CheckpointConfig(cache_dir=cache), log=lambda m: None)
    assert [p.name for p in cache.iterdir()] == [".lock"]


def test_a_conversion_that_fails_half_way_removes_what_it_wrote(tmp_path, monkeypatch):
    """A conversion that failed after writing (a full disk while saving the float32
    weights) left its folder; the next night's sweep spares a living process's folder,
    so only the conversion's own cleanup removes it. transformers stands in for the disk."""
    require(importlib.util.find_spec("transformers") is not None, "transformers is missing")
    import errno
    from pathlib import Path
    import transformers
    from align.checkpoint import CheckpointConfig, ensure_checkpoint

    class HalfSaved:
        config = type("Config", (), {"model_type": "llama"})()

        def save_pretrained(self, folder):
            Path(folder).mkdir(parents=True)
            (Path(folder) / "model-00001.safetensors").write_bytes(b"\0" * 4096)
            raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained",
                        lambda *a, **k: HalfSaved())
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF" + b"\0" * 64)
    cache = tmp_path / "hf"
    with pytest.raises(OSError, match="No space"):
        ensure_checkpoint(gguf, CheckpointConfig(cache_dir=cache), log=lambda m: None)
    assert [p.name for p in cache.iterdir()] == [".lock"]
