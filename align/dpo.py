"""Stage 2b: LoRA DPO on the pairs, with trl, politely, on the user's own computer.

    result = train_dpo(pairs, checkpoint_dir, work_dir, DPOSettings())

The loss, per pair i with label-flip probability ε_i (conservative DPO, the expected DPO
loss under a label that is wrong with probability ε_i, plus an NLL term on the chosen
reply as in the IFLLM paper and RPO):

    h_i    = [log π(c_i) − log π_ref(c_i)] − [log π(r_i) − log π_ref(r_i)]
    dpo_i  = (1 − ε_i)·(−log σ(β h_i)) + ε_i·(−log σ(−β h_i))
    nll_i  = −log π(c_i) / |c_i|                      (mean over the chosen tokens)
    loss   = mean_i [dpo_i + λ·(1 − 2 ε_i)·nll_i]

trl's ``label_smoothing`` is one ε per run; here each pair brings its own (explicit
labels small, inferred ones up to 0.45). A noisy pair weighs less: its pull at h = 0 is
(1 − 2ε) of a clean pair's, and it stops at σ(β h) = 1 − ε instead of pushing h on. (The
robust DPO of Chowdhury et al. 2024, used before, divides by 1 − 2ε instead: unbiased,
but an inferred pair at ε 0.45 pulled ten times as hard as a deliberate pick, and its
loss had no floor, so the least certain labels drove the adapter.) The NLL term is scaled
by (1 − 2ε) so a coin-flip label teaches nothing about what to imitate.

Speed on a CPU (the same trl Trainer loop, optimiser and checkpoints; only the forward
differs from a plain DPOTrainer):
- LoRA sits on the top ``lora_top_fraction`` of the decoder layers. The layers below are
  frozen *and* unadapted, so their output — the "trunk" — is the same for the policy and
  the reference: it is computed once per sequence without gradients (and kept across
  epochs within ``trunk_cache_mb``), then the top layers run twice (policy with
  gradients, reference with the adapter off).
- The reference log-probabilities of a pair are computed once and reused every epoch.
- The LM head (49 k × 576 for SmolLM2) runs only on completion positions, in chunks,
  never on prompt or padding positions; batches group pairs of similar length.

Plus the job's manners: lowest CPU and I/O priority, a single-instance lock, an optional
skip on battery, checkpoints every few steps so a killed run resumes, a progress bar on
a terminal.
"""
from __future__ import annotations

import contextlib
import ctypes
import json
import math
import os
import platform
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LM_HEAD_CHUNK = 512
LM_HEAD_KEEP = 64 * 2**20          # logits kept for backward up to this many (else recomputed)


@dataclass
class DPOSettings:
    beta: float = 0.1
    nll_weight: float = 0.2           # λ
    lora_r: int = 8
    lora_alpha: int = 16
    lora_top_fraction: float = 0.5    # LoRA on the top half of the layers (1.0 = all)
    target_modules: tuple = TARGET_MODULES
    learning_rate: float = 1e-4
    epochs: int = 2
    token_budget: int | None = 40_000  # fewer epochs (never < 1) when one would exceed it
    batch_pairs: int = 2
    max_prompt_tokens: int = 256      # oldest whole turns are left out (as the app fits its context)
    max_completion_tokens: int = 160  # longer replies are trained on their beginning
    seed: int = 0
    checkpoints: int = 4              # how many times per run the state is saved (resume)
    device: str = "auto"              # auto | cpu | cuda | mps
    threads: int | None = None        # torch CPU threads (default: all cores)
    trunk_cache_mb: int = 1024
    progress: bool | None = None      # progress bar (None: when stderr is a terminal)
    split_trunk: bool = True          # False: full forward twice, like a plain DPOTrainer

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainResult:
    adapter_dir: Path
    steps: int
    resumed_from_step: int
    tokens: int                       # non-padding tokens through the model, all epochs
    train_seconds: float
    tokens_per_s: float
    loss: float | None
    metrics: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["adapter_dir"] = str(self.adapter_dir)
        return data


def pick_device(setting: str = "auto") -> str:
    import torch
    if setting != "auto":
        return setting
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


# --- tokenising ------------------------------------------------------------------------------
def tokenize_pair(pair, tokenizer, settings: DPOSettings) -> dict:
    """prompt_ids / chosen_ids / rejected_ids with the model's own chat template. The
    completion is what follows the rendered prompt: with the end-of-turn token when the
    reply ended by itself, without it when it was cut short (stopped, or at its limit)."""
    prompt = fit_prompt(list(pair.prompt), tokenizer, settings.max_prompt_tokens)
    prompt_text = chat_text(tokenizer, prompt, add_generation_prompt=True)
    prompt_ids = _ids(tokenizer, prompt_text)
    full = [_ids(tokenizer, chat_text(tokenizer, prompt + [{"role": "assistant", "content": reply}])
                 if finished else prompt_text + reply)
        for reply, finished in ((pair.chosen, pair.chosen_finished),
                                (pair.rejected, pair.rejected_finished))]
    # The completion starts where prompt and prompt+reply stop agreeing (a token can
    # merge across the boundary); both replies share that prompt.
    start = min(_common_prefix(prompt_ids, ids) for ids in full)
    chosen, rejected = (ids[start:][: settings.max_completion_tokens] for ids in full)
    prompt_ids = prompt_ids[:start]
    return {"prompt_ids": prompt_ids, "chosen_ids": chosen, "rejected_ids": rejected,
            "epsilon": float(pair.epsilon),
            "length": len(prompt_ids) + max(len(chosen), len(rejected))}


def chat_text(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> str:
    """The tokenizer's chat template over ``messages`` reshaped as the app reshapes them
    for this template (align.templates: a system prompt folded in, repeated turns merged)."""
    from .templates import template_rules
    rules = getattr(tokenizer, "glance_template_rules", None)
    if rules is None:
        rules = template_rules(lambda m: tokenizer.apply_chat_template(
            m, tokenize=False, add_generation_prompt=True))
        tokenizer.glance_template_rules = rules
    return tokenizer.apply_chat_template(rules.apply(messages), tokenize=False,
                                         add_generation_prompt=add_generation_prompt)


def fit_prompt(messages: list[dict], tokenizer, limit: int) -> list[dict]:
    """The prompt as the app would send it in a context of ``limit`` tokens: the oldest
    whole turns are left out (the system prompt and the newest message stay, and the kept
    history never starts on an assistant turn), so training sees the layout inference
    produces. When the system prompt and the newest message alone are too long, the
    newest message loses its beginning (keeping at least a quarter of the limit), then the
    system prompt its end; the layout always stays."""
    system = [m for m in messages[:1] if m["role"] == "system"]
    turns = messages[len(system):]

    def length(kept):
        return len(_ids(tokenizer, chat_text(tokenizer, kept, add_generation_prompt=True)))
    dropped = 0
    while length(system + turns[dropped:]) > limit and dropped < len(turns) - 1:
        dropped += 1
        while dropped < len(turns) - 1 and turns[dropped]["role"] == "assistant":
            dropped += 1
    kept = system + turns[dropped:]
    phases = [(len(kept) - 1, limit // 4, True)] + ([(0, 0, False)] if system else [])
    for index, keep_at_least, from_start in phases:
        for _ in range(8):          # decoding and re-rendering can move a token or two
            excess = length(kept) - limit
            words = _ids(tokenizer, kept[index]["content"]) if kept else []
            drop = min(excess, len(words) - keep_at_least)
            if drop <= 0:
                break
            words = words[drop:] if from_start else words[:len(words) - drop]
            kept[index] = dict(kept[index], content=tokenizer.decode(words))
    return kept


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _common_prefix(a, b) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def collate(examples: list[dict], pad_id: int) -> dict:
    """[chosen rows; rejected rows], right-padded, with a completion mask."""
    import torch
    rows, masks = [], []
    for side in ("chosen_ids", "rejected_ids"):
        for ex in examples:
            rows.append(list(ex["prompt_ids"]) + list(ex[side]))
            masks.append([0] * len(ex["prompt_ids"]) + [1] * len(ex[side]))
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    completion = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (row, mask) in enumerate(zip(rows, masks)):
        ids[i, :len(row)] = torch.tensor(row)
        attention[i, :len(row)] = 1
        completion[i, :len(row)] = torch.tensor(mask)
    batch = {"input_ids": ids, "attention_mask": attention, "completion_mask": completion,
             "epsilon": torch.tensor([float(ex["epsilon"]) for ex in examples]),
             "index": torch.tensor([int(ex.get("index", -1)) for ex in examples])}
    return batch


# --- log-probabilities -----------------------------------------------------------------------
def decoder_of(model):
    """The transformer stack (``model.model`` of a *ForCausalLM), under PEFT or not."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.model


@contextlib.contextmanager
def only_layers(decoder, start: int, stop: int, final_norm: bool):
    """Run ``decoder`` over layers[start:stop] only (the model's own forward, so its
    masks and rotary embeddings are built exactly as usual)."""
    import torch.nn as nn
    layers, norm = decoder.layers, decoder.norm
    layer_types = getattr(decoder.config, "layer_types", None)
    decoder.layers = nn.ModuleList(list(layers)[start:stop])
    if not final_norm:
        decoder.norm = nn.Identity()
    if layer_types is not None:
        decoder.config.layer_types = list(layer_types)[start:stop]
    try:
        yield
    finally:
        decoder.layers, decoder.norm = layers, norm
        if layer_types is not None:
            decoder.config.layer_types = layer_types


def completion_logps(model, hidden, input_ids, completion_mask, grad: bool):
    """Per-sequence sum of log p(token) over completion tokens, and the number of them.
    The LM head runs on completion positions only, ``LM_HEAD_CHUNK`` rows at a time; when
    the batch's logits would pass ``LM_HEAD_KEEP`` values they are recomputed in the
    backward pass instead of kept (a 262 k vocabulary adds up fast)."""
    import torch
    from torch.utils.checkpoint import checkpoint

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = base.get_output_embeddings()
    config = base.config.get_text_config()
    softcap = getattr(config, "final_logit_softcapping", None)
    targets = completion_mask[:, 1:].bool()
    rows, cols = targets.nonzero(as_tuple=True)
    states = hidden[:, :-1][rows, cols]
    labels = input_ids[:, 1:][rows, cols]

    def chunk_logps(h, y):
        logits = head(h).float()
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        return logits.gather(-1, y[:, None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)

    recompute = grad and len(labels) * head.weight.shape[0] > LM_HEAD_KEEP
    pieces = []
    for start in range(0, len(labels), LM_HEAD_CHUNK):
        h, y = states[start:start + LM_HEAD_CHUNK], labels[start:start + LM_HEAD_CHUNK]
        pieces.append(checkpoint(chunk_logps, h, y, use_reentrant=False) if recompute
                      else chunk_logps(h, y))
    token_logps = torch.cat(pieces) if pieces else hidden.new_zeros(0)
    sums = hidden.new_zeros(input_ids.shape[0]).index_add(0, rows, token_logps)
    counts = targets.sum(dim=1)
    return sums, counts


class Scorer:
    """Sequence log-probabilities of a (PEFT) model, with and without its adapter,
    sharing the frozen trunk below the first adapted layer."""

    def __init__(self, model, split: int, cache_mb: int = 0):
        self.model = model
        self.split = split
        self.cache_bytes = cache_mb * 2**20
        self._trunk_cache: dict = {}
        self._ref_cache: dict = {}
        self._cached_bytes = 0

    def _trunk(self, ids, attention, keys):
        import torch
        lengths = attention.sum(dim=1).tolist()
        if keys is not None and all(k in self._trunk_cache for k in keys):
            width = ids.shape[1]
            rows = [torch.nn.functional.pad(self._trunk_cache[k], (0, 0, 0, width - self._trunk_cache[k].shape[0]))
                    for k in keys]
            return torch.stack(rows)
        decoder = decoder_of(self.model)
        with torch.no_grad(), only_layers(decoder, 0, self.split, final_norm=False):
            trunk = decoder(input_ids=ids, attention_mask=attention, use_cache=False).last_hidden_state
        if keys is not None:
            for key, row, n in zip(keys, trunk, lengths):
                size = row[:n].numel() * row.element_size()
                if self._cached_bytes + size <= self.cache_bytes:
                    self._trunk_cache[key] = row[:n].clone()
                    self._cached_bytes += size
        return trunk

    def _hidden(self, ids, attention, trunk):
        decoder = decoder_of(self.model)
        if trunk is None:
            return decoder(input_ids=ids, attention_mask=attention, use_cache=False).last_hidden_state
        with only_layers(decoder, self.split, len(decoder.layers), final_norm=True):
            return decoder(inputs_embeds=trunk, attention_mask=attention, use_cache=False).last_hidden_state

    def logps(self, batch, keys=None, policy_grad: bool = True):
        """(policy sums, reference sums, completion token counts) for every row."""
        import torch
        ids, attention, completion = batch["input_ids"], batch["attention_mask"], batch["completion_mask"]
        trunk = self._trunk(ids, attention, keys) if self.split > 0 else None
        grad_context = contextlib.nullcontext() if policy_grad else torch.no_grad()
        with grad_context:
            hidden = self._hidden(ids, attention, trunk)
            policy, counts = completion_logps(self.model, hidden, ids, completion, grad=policy_grad)
        if keys is not None and all(k in self._ref_cache for k in keys):
            reference = torch.tensor([self._ref_cache[k] for k in keys], dtype=policy.dtype,
                                     device=policy.device)
        else:
            with torch.no_grad(), self.adapter_off():
                hidden = self._hidden(ids, attention, trunk)
                reference, _ = completion_logps(self.model, hidden, ids, completion, grad=False)
            if keys is not None:
                self._ref_cache.update(zip(keys, reference.tolist()))
        return policy, reference, counts

    def adapter_off(self):
        return self.model.disable_adapter() if hasattr(self.model, "disable_adapter") \
            else contextlib.nullcontext()


def noisy_label_dpo_loss(h, epsilon, beta: float):
    """Per-pair DPO loss for margins ``h`` whose labels are wrong with probability
    ``epsilon`` (conservative DPO: bounded, and a noisy pair weighs less)."""
    import torch.nn.functional as F
    return -(1 - epsilon) * F.logsigmoid(beta * h) - epsilon * F.logsigmoid(-beta * h)


def pair_loss(policy, reference, counts, epsilon, beta: float, nll_weight: float):
    """The loss above from per-row sums laid out [chosen; rejected]."""
    n = epsilon.shape[0]
    policy_c, policy_r = policy[:n], policy[n:]
    ref_c, ref_r = reference[:n], reference[n:]
    h = (policy_c - ref_c) - (policy_r - ref_r)
    dpo = noisy_label_dpo_loss(h, epsilon, beta)
    nll = -policy_c / counts[:n].clamp(min=1)
    loss = (dpo + nll_weight * (1 - 2 * epsilon) * nll).mean()
    return loss, {"h": h.detach(), "dpo": dpo.detach(), "nll": nll.detach()}


# --- the trainer -----------------------------------------------------------------------------
def _trainer_class():
    from trl import DPOTrainer

    class GlanceDPOTrainer(DPOTrainer):
        """trl's DPOTrainer (loop, optimiser, checkpoints, logging) with the loss above."""

        glance_settings: DPOSettings
        scorer: Scorer

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset          # tokenised by tokenize_pair already

        def _set_signature_columns_if_needed(self):
            if self._signature_columns is None:
                self._signature_columns = ["prompt_ids", "chosen_ids", "rejected_ids", "epsilon",
                                           "index", "length"]

        def _compute_loss(self, model, inputs, return_outputs=False):
            import torch
            settings = self.glance_settings
            mode = "train" if self.model.training else "eval"
            index = inputs["index"].tolist()
            keys = [(i, "c") for i in index] + [(i, "r") for i in index] if min(index) >= 0 else None
            policy, reference, counts = self.scorer.logps(inputs, keys=keys,
                                                          policy_grad=torch.is_grad_enabled())
            loss, parts = pair_loss(policy, reference, counts, inputs["epsilon"].to(policy.dtype),
                                    settings.beta, settings.nll_weight)
            if mode == "train":
                self._total_train_tokens += int(inputs["attention_mask"].sum())
            metrics = self._metrics[mode]
            metrics["num_tokens"] = [self._total_train_tokens]
            metrics["rewards/margins"].append(float(settings.beta * parts["h"].mean()))
            metrics["rewards/accuracies"].append(float((parts["h"] > 0).float().mean()))
            metrics["loss/dpo"].append(float(parts["dpo"].mean()))
            metrics["loss/nll"].append(float(parts["nll"].mean()))
            return (loss, None) if return_outputs else loss

    return GlanceDPOTrainer


def epochs_within_budget(examples: list[dict], settings: DPOSettings) -> int:
    """``settings.epochs``, lowered (to 1 at least) so the tokens trained on stay within
    ``token_budget``: the night's run time grows with the pairs only up to a point."""
    if not settings.token_budget:
        return settings.epochs
    per_epoch = sum(2 * len(e["prompt_ids"]) + len(e["chosen_ids"]) + len(e["rejected_ids"])
                    for e in examples)
    return max(1, min(settings.epochs, settings.token_budget // max(per_epoch, 1)))


def load_policy(checkpoint_dir: Path, settings: DPOSettings, device: str):
    """The base model from its HF checkpoint, its tokenizer, and the LoRA config."""
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint_dir)
    model = AutoModelForCausalLM.from_pretrained(checkpoint_dir, dtype=torch.float32).to(device)
    layers = model.config.get_text_config().num_hidden_layers
    first = layers - max(1, round(layers * settings.lora_top_fraction))
    lora = LoraConfig(r=settings.lora_r, lora_alpha=settings.lora_alpha, lora_dropout=0.0,
                      target_modules=list(settings.target_modules), bias="none",
                      task_type="CAUSAL_LM", layers_to_transform=list(range(first, layers)))
    return model, tokenizer, lora, first


def make_trainer(pairs, checkpoint_dir: Path, work_dir: Path, settings: DPOSettings,
                 callbacks=()):
    """A ready GlanceDPOTrainer on ``pairs`` (not started)."""
    import torch
    import transformers
    from datasets import Dataset
    from trl import DPOConfig

    transformers.logging.set_verbosity_error()
    device = pick_device(settings.device)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    model, tokenizer, lora, first = load_policy(Path(checkpoint_dir), settings, device)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    examples = [dict(tokenize_pair(pair, tokenizer, settings), index=i) for i, pair in enumerate(pairs)]
    epochs = epochs_within_budget(examples, settings)
    steps_per_epoch = math.ceil(len(examples) / settings.batch_pairs)
    total_steps = steps_per_epoch * epochs
    progress = sys.stderr.isatty() if settings.progress is None else settings.progress
    import warnings
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
    args = DPOConfig(
        output_dir=str(Path(work_dir) / "trainer"), per_device_train_batch_size=settings.batch_pairs,
        num_train_epochs=epochs, learning_rate=settings.learning_rate, beta=settings.beta,
        loss_type=["sigmoid"], max_length=None, seed=settings.seed,   # (compute_loss is ours)
        use_cpu=device == "cpu", bf16=False, fp16=False, gradient_checkpointing=False,
        report_to=[], logging_steps=max(1, steps_per_epoch), disable_tqdm=not progress,
        save_strategy="steps", save_steps=max(1, math.ceil(total_steps / max(1, settings.checkpoints))),
        save_total_limit=1, save_only_model=False, train_sampling_strategy="group_by_length",
        length_column_name="length", dataloader_num_workers=0, remove_unused_columns=True)
    pad_id = tokenizer.pad_token_id
    trainer = _trainer_class()(
        model=model, args=args, train_dataset=Dataset.from_list(examples), processing_class=tokenizer,
        data_collator=lambda batch: collate(batch, pad_id), peft_config=lora,
        callbacks=list(callbacks))
    trainer.glance_settings = settings
    split = first if settings.split_trunk else 0
    # The trunk is kept only if it will be read again (a second epoch).
    trainer.scorer = Scorer(trainer.model, split, settings.trunk_cache_mb if split and epochs > 1 else 0)
    from transformers.trainer_callback import PrinterCallback
    trainer.remove_callback(PrinterCallback)   # logs go to the result, not to stdout
    return trainer


def last_complete_checkpoint(folder: Path) -> str | None:
    """The newest ``checkpoint-N`` the trainer finished writing (it writes
    trainer_state.json last), or None. A checkpoint half-written when the job was killed
    is deleted: resuming from it would fail, or restart on top of trained weights, every
    night until the pairs changed."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    found = sorted((int(p.name.split("-", 1)[1]), p) for p in folder.iterdir()
                   if p.is_dir() and p.name.startswith("checkpoint-") and p.name[11:].isdigit())
    for _, path in reversed(found):
        if (path / "trainer_state.json").is_file():
            return str(path)
        shutil.rmtree(path, ignore_errors=True)
    return None


def train_dpo(pairs, checkpoint_dir: Path, work_dir: Path, settings: DPOSettings | None = None,
              callbacks=(), log=print) -> TrainResult:
    """Train a LoRA adapter on ``pairs``; resume from the newest checkpoint under
    ``work_dir`` if a previous run on the same work dir was interrupted."""
    settings = settings or DPOSettings()
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    trainer = make_trainer(pairs, checkpoint_dir, work_dir, settings, callbacks)
    resume = last_complete_checkpoint(work_dir / "trainer")
    resumed_from = int(resume.rsplit("-", 1)[-1]) if resume else 0
    if resume:
        log(f"Resuming the interrupted training from step {resumed_from}.")
    started = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=resume)
    seconds = time.perf_counter() - started
    adapter_dir = work_dir / "adapter"
    trainer.model.save_pretrained(str(adapter_dir))
    history = [entry for entry in trainer.state.log_history if "loss" in entry]
    tokens = trainer._total_train_tokens
    result = TrainResult(
        adapter_dir=adapter_dir, steps=trainer.state.global_step, resumed_from_step=resumed_from,
        tokens=tokens, train_seconds=seconds, tokens_per_s=tokens / seconds if seconds else 0.0,
        loss=float(output.training_loss) if output.training_loss is not None else None,
        metrics={"log": history, "split_layer": trainer.scorer.split})
    (work_dir / "train_result.json").write_text(json.dumps(result.to_dict(), indent=2, default=str))
    return result


# --- running politely -------------------------------------------------------------------------
IOPRIO_CLASS_IDLE = 3
IOPRIO_CLASS_SHIFT = 13
_IOPRIO_SET = {"x86_64": 251, "aarch64": 30, "arm64": 30, "i386": 289, "armv7l": 314}


def lower_priority() -> dict:
    """Lowest CPU priority (nice 19, and SCHED_IDLE where there is one) and idle I/O
    class, for this process and the threads it starts afterwards. Returns what was set."""
    done = {}
    try:
        done["nice"] = os.nice(19 - os.nice(0))
    except OSError:
        pass
    if hasattr(os, "sched_setscheduler") and hasattr(os, "SCHED_IDLE"):
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            done["sched"] = "idle"
        except OSError:
            pass
    number = _IOPRIO_SET.get(platform.machine())
    if sys.platform.startswith("linux") and number:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            # ioprio_set(IOPRIO_WHO_PROCESS=1, pid 0 = this process, class idle)
            if libc.syscall(number, 1, 0, IOPRIO_CLASS_IDLE << IOPRIO_CLASS_SHIFT) == 0:
                done["ioprio"] = "idle"
        except OSError:
            pass
    return done


def on_battery(supplies: Path = Path("/sys/class/power_supply")) -> bool:
    """True when running on battery (Linux sysfs, macOS pmset); False when unknown."""
    supplies = Path(supplies)
    if supplies.is_dir():
        mains = [p for p in supplies.iterdir() if (p / "type").exists()
                 and (p / "type").read_text().strip() in ("Mains", "USB")]
        batteries = [p for p in supplies.iterdir() if (p / "type").exists()
                     and (p / "type").read_text().strip() == "Battery"]
        if not batteries:
            return False
        if any((p / "online").exists() and (p / "online").read_text().strip() == "1" for p in mains):
            return False
        return any((p / "status").exists() and (p / "status").read_text().strip() == "Discharging"
                   for p in batteries)
    if sys.platform == "darwin" and supplies == Path("/sys/class/power_supply"):
        import subprocess
        try:
            out = subprocess.run(["pmset", "-g", "batt"], capture_output=True, text=True, timeout=5).stdout
        except (OSError, subprocess.SubprocessError):
            return False
        return "Battery Power" in out
    return False


def load_scorer(checkpoint_dir: Path, adapter_dir: Path, settings: DPOSettings | None = None):
    """(Scorer, tokenizer) for a saved PEFT adapter on its base checkpoint (the gate
    and the tests use it; training builds its own)."""
    import torch
    import transformers
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    transformers.logging.set_verbosity_error()
    settings = settings or DPOSettings()
    device = pick_device(settings.device)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(checkpoint_dir, dtype=torch.float32).to(device)
    model = PeftModel.from_pretrained(model, str(adapter_dir)).eval()
    layers = model.peft_config["default"].layers_to_transform
    first = min(layers) if layers and settings.split_trunk else 0
    return Scorer(model, first), tokenizer
