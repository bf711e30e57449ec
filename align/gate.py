"""Stage 4: the gate — publish an adapter only if it is better and stays within limits.

    train, heldout = split_by_conversation(pairs, GateConfig())
    report = evaluate(scorer, tokenizer, heldout, base_gguf, adapter_gguf, prompts, config)
    publish, reasons = decide(report, config)

1. **Better, on conversations it never trained on.** Pairs are split by conversation
   (a stable hash of its id, so a conversation stays on the same side night after
   night). On the held-out pairs, the adapter's implicit reward
   ``h = [log π(c) − log π_ref(c)] − [log π(r) − log π_ref(r)]`` should favour the chosen
   reply: *implicit-reward accuracy* is the share of pairs with h > 0; the base has
   h = 0 everywhere (accuracy ½), so the paired test is an exact one-sided sign test of
   h > 0 against h < 0. Reported beside it: how often the policy and the base each give
   the chosen reply the higher per-token log-probability, with McNemar's exact test.
   The adapter passes when implicit-reward accuracy > ½, the mean h > 0 and the policy's
   accuracy is at least the base's (and, if ``max_p_value`` is set, p ≤ it: with a few
   held-out pairs significance is out of reach, so by default it is reported, not
   required).
2. **Within limits, on fresh samples from the real thing.** The exported GGUF adapter on
   the user's own base model in llama.cpp samples replies to held-out prompts (the same
   seeds for adapter and base). KL(π ‖ π_ref) per token is estimated on the adapter's
   samples (log π − log π_ref of each sampled token), and the mean reply length of the
   adapter's samples is compared with the base's: inferred labels tend to reward length.
   Limits: KL ≤ ``max_kl_per_token`` nats per token, length ratio within
   [1 / ``max_length_ratio``, ``max_length_ratio``].
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np


@dataclass
class GateConfig:
    heldout_fraction: float = 0.25
    min_heldout_pairs: int = 1
    max_p_value: float | None = None      # None: the sign test is reported, not required
    max_kl_per_token: float = 0.35        # nats per sampled token
    max_length_ratio: float = 1.5         # adapter / base mean sampled length, either way
    # Samples stop at sample_tokens, so a reply that grows past the cap looks no longer
    # than one that just reaches it: the share of samples newly cut there is checked too.
    max_capped_increase: float = 0.34     # adapter − base share of samples cut at the cap
    samples: int = 6                      # fresh replies per model
    sample_tokens: int = 128
    temperature: float = 1.0              # KL is estimated on the adapter's own distribution
    seed: int = 0
    threads: int = 2
    batch_pairs: int = 4
    # The exported file is checked against the trained weights on this many held-out
    # pairs, those the weights move most (each costs two replies read by two models in
    # llama.cpp: all 28 pairs of a 100-pair night took 2.5 minutes, 6 took one). It is
    # refused when it moves them the other way (slope < 0) on the pairs the weights move
    # clearly more than llama.cpp's arithmetic can blur: |h| at least published_noise_factor
    # times the pair's noise, measured on the spot as how far llama.cpp and torch disagree
    # on the base model's own margin for the same pairs. Measured: a weak adapter of the
    # 100-pair bench moved its 4 pairs by 0.3-0.6 nats, the noise was 1.8 (llama.cpp's
    # copy moved them by -0.9 to +1.7: a sign check refused it half the time, saying the
    # export was broken); the end-to-end test's adapter moved its pairs by 24, noise 0.4.
    # Too weak to check on every pair: the file check says so and does not decide.
    published_pairs: int = 4
    published_noise_factor: float = 3.0

    def to_dict(self) -> dict:
        return asdict(self)


# --- split ---------------------------------------------------------------------------------
def _bucket(conversation_id: str, seed: int) -> float:
    digest = hashlib.sha256(f"{seed}:{conversation_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_by_conversation(pairs, config: GateConfig | None = None):
    """(train, heldout): whole conversations on one side. With two or more
    conversations at least one is held out and at least one trained on."""
    config = config or GateConfig()
    conversations = sorted({p.conversation_id for p in pairs},
                           key=lambda c: _bucket(c, config.seed))
    held = {c for c in conversations if _bucket(c, config.seed) < config.heldout_fraction}
    if len(conversations) >= 2:
        if not held:
            held = {conversations[0]}
        if len(held) == len(conversations):
            held.discard(conversations[-1])
    train = [p for p in pairs if p.conversation_id not in held]
    heldout = [p for p in pairs if p.conversation_id in held]
    return train, heldout


# --- 1. implicit reward on held-out pairs -----------------------------------------------------
def heldout_margins(scorer, tokenizer, examples, batch_pairs: int = 4) -> dict:
    """Per tokenised pair (``dpo.tokenize_pair``): h, and the policy's and the base's
    per-token log-prob margins, from the trained (PEFT) adapter."""
    import torch
    from .dpo import collate

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    h, policy_margin, base_margin, base_logps = [], [], [], []
    for start in range(0, len(examples), batch_pairs):
        chunk = examples[start:start + batch_pairs]
        batch = collate(chunk, pad)
        with torch.no_grad():
            policy, reference, counts = scorer.logps(batch, keys=None, policy_grad=False)
        n = len(chunk)
        counts = counts.clamp(min=1).to(policy.dtype)
        pc, pr, rc, rr = policy[:n], policy[n:], reference[:n], reference[n:]
        h += ((pc - rc) - (pr - rr)).tolist()
        policy_margin += (pc / counts[:n] - pr / counts[n:]).tolist()
        base_margin += (rc / counts[:n] - rr / counts[n:]).tolist()
        base_logps += list(zip(rc.tolist(), rr.tolist()))
    return {"h": h, "policy_margin": policy_margin, "base_margin": base_margin,
            "base_logps": base_logps}


def completion_logps(llm, prompt_ids, completions) -> list[float]:
    """log p(completion | prompt) in llama.cpp for each completion (``llm`` made with
    ``logits_all=True``). The prompt is read once: each completion is read after it from
    the cache (llama-cpp-python drops the cache past ``n_tokens`` at the next eval)."""
    llm.reset()
    llm.eval(list(prompt_ids))
    start, found = len(prompt_ids), []
    for completion in completions:
        completion = list(completion)
        llm.n_tokens = start
        if len(completion) > 1:
            llm.eval(completion[:-1])       # (the last token's logits predict nothing needed)
        # Row i predicts token i + 1: the prompt's last row the first completion token.
        logp = _log_softmax(llm.scores[start - 1: start - 1 + len(completion)])
        found.append(float(logp[np.arange(len(completion)), completion].sum()))
    return found


def published_margins(base_gguf: Path, adapter_gguf: Path, examples, threads: int = 2) -> dict:
    """h per pair from the exported file, in llama.cpp, on the very token ids the trained
    adapter was scored on (``h``), and the base model's log-probabilities of each pair's
    two replies there (``base``: (chosen, rejected)). The file is what the chat will use:
    an export that flipped, scaled or misplaced the update would pass a gate that judged
    the PEFT weights alone."""
    from llama_cpp import Llama
    longest = max(len(e["prompt_ids"]) + max(len(e["chosen_ids"]), len(e["rejected_ids"]))
                  for e in examples)
    common = dict(n_ctx=longest + 16, n_threads=threads, n_threads_batch=threads,
                  logits_all=True, verbose=False)
    logps = {}
    for name, extra in (("base", {}), ("policy", {"lora_path": str(adapter_gguf)})):
        llm = Llama(str(base_gguf), **common, **extra)     # one at a time: every logit is kept
        try:
            logps[name] = [completion_logps(llm, e["prompt_ids"], (e["chosen_ids"], e["rejected_ids"]))
                           for e in examples]
        finally:
            llm.close()
    return {"h": [(pc - bc) - (pr - br) for (pc, pr), (bc, br) in zip(logps["policy"], logps["base"])],
            "base": logps["base"]}


def strongest(trained_h, n: int) -> list[int]:
    """The ``n`` pairs the trained weights move most (largest |h|): where a faithful
    export must agree in sign, whatever quantisation does to the small ones."""
    return sorted(np.argsort(-np.abs(np.asarray(trained_h, dtype=np.float64)))[:n].tolist())


def published_report(trained_h, published_h, noise_h=None, noise_factor: float = 3.0) -> dict:
    """How closely the exported file follows the trained weights, on the pairs the weights
    move clearly more than the arithmetic's noise (``checked``). ``noise_h``: per pair,
    how far llama.cpp and torch disagree on the *base* model's margin (the same weights,
    other arithmetic); without it every pair is checked."""
    trained, published = np.asarray(trained_h, dtype=np.float64), np.asarray(published_h, dtype=np.float64)
    noise = float(np.sqrt(np.mean(np.square(noise_h)))) if noise_h is not None and len(noise_h) else None
    checked = np.abs(trained) >= noise_factor * noise if noise is not None else np.ones(len(trained), bool)
    t, p = trained[checked], published[checked]
    n, spread = int(checked.sum()), float((t ** 2).sum())
    return {"pairs": len(trained), "checked": n,
            "same_sign_share": float(np.mean(np.sign(t) == np.sign(p))) if n else None,
            # published ≈ slope × trained: 1 when the file does what the weights do
            "slope": float((t * p).sum() / spread) if spread > 0 else None,
            "trained_h": trained.tolist(), "published_h": published.tolist(),
            "noise_h": None if noise_h is None else [float(v) for v in noise_h],
            "noise_rms": noise}


def sign_test_p(wins: int, losses: int) -> float:
    """One-sided exact binomial p of at least ``wins`` successes in wins + losses."""
    n = wins + losses
    if n == 0:
        return 1.0
    return sum(math.comb(n, k) for k in range(wins, n + 1)) / 2**n


def implicit_reward_report(margins: dict) -> dict:
    h = np.asarray(margins["h"], dtype=np.float64)
    policy = np.asarray(margins["policy_margin"]) > 0
    base = np.asarray(margins["base_margin"]) > 0
    wins, losses = int((h > 0).sum()), int((h < 0).sum())
    # McNemar: pairs only the policy gets right vs only the base
    only_policy, only_base = int((policy & ~base).sum()), int((base & ~policy).sum())
    n = len(h)
    return {
        "heldout_pairs": n,
        "implicit_reward_accuracy": (wins + 0.5 * (n - wins - losses)) / n if n else None,
        "base_implicit_reward_accuracy": 0.5,
        "mean_h": float(h.mean()) if n else None,
        "sign_test_p": sign_test_p(wins, losses),
        "policy_accuracy": float(policy.mean()) if n else None,
        "base_accuracy": float(base.mean()) if n else None,
        "mcnemar": {"only_policy": only_policy, "only_base": only_base,
                    "p": sign_test_p(only_policy, only_base)},
    }


# --- 2. KL and length drift of fresh samples ------------------------------------------------
def _log_softmax(logits: np.ndarray) -> np.ndarray:
    """Over the last axis: one row of logits, or one row per position."""
    logits = np.asarray(logits, dtype=np.float64)
    top = logits.max(axis=-1, keepdims=True)
    return logits - top - np.log(np.exp(logits - top).sum(axis=-1, keepdims=True))


def _last_logits(llm) -> np.ndarray:
    import numpy.ctypeslib as ctypeslib
    return np.array(ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),)))


def _sample(llm, prompt, max_tokens, temperature, rng, judge=None):
    """Sample a reply token by token from ``llm``. With ``judge`` (another Llama) the
    same tokens are fed to it in lockstep; returns (tokens, Σ log p_llm − log p_judge,
    whether the reply ended by itself: an end-of-turn token, counted among the tokens)."""
    import llama_cpp
    models = [llm] + ([judge] if judge is not None else [])
    for model in models:
        model.reset()
        model.eval(prompt)
    tokens, log_ratio = [], 0.0
    for _ in range(max_tokens):
        # Both distributions at the sampling temperature: the samples come from the
        # adapter's tempered one, so that is the one whose KL they estimate (the untempered
        # log-probs summed over them estimated nothing at a temperature other than 1).
        logp = _log_softmax(_last_logits(llm) / temperature)
        probs = np.exp(logp)
        token = int(rng.choice(len(probs), p=probs / probs.sum()))
        if judge is not None:
            log_ratio += float(logp[token] - _log_softmax(_last_logits(judge) / temperature)[token])
        tokens.append(token)
        if llama_cpp.llama_vocab_is_eog(llm._model.vocab, token):
            return tokens, log_ratio, True
        for model in models:
            model.eval([token])
    return tokens, log_ratio, False


def prompt_tokens(llm, messages: list[dict]) -> list[int]:
    """The model's own chat template, as the app renders it (llama.cpp's formatter)."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter
    template = llm.metadata.get("tokenizer.chat_template")
    if not template:
        text = "\n".join(m["content"] for m in messages) + "\n"
        return llm.tokenize(text.encode(), add_bos=True, special=True)
    eos, bos = llm.token_eos(), llm.token_bos()
    formatter = Jinja2ChatFormatter(
        template=template, eos_token=llm._model.token_get_text(eos) if eos != -1 else "",
        bos_token=llm._model.token_get_text(bos) if bos != -1 else "")
    from .templates import template_rules
    rules = template_rules(lambda m: formatter(messages=m))     # as the app reshapes them
    text = formatter(messages=rules.apply(messages)).prompt
    return llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)


def sample_drift(base_gguf: Path, adapter_gguf: Path, prompts: list, config: GateConfig) -> dict:
    """KL per token and length ratio on fresh samples (llama.cpp, the published files)."""
    from llama_cpp import Llama

    common = dict(n_ctx=2048, n_threads=config.threads, n_threads_batch=config.threads,
                  verbose=False, seed=config.seed)
    base = Llama(str(base_gguf), **common)
    policy = Llama(str(base_gguf), lora_path=str(adapter_gguf), **common)
    try:
        kl_sum, kl_tokens, policy_lengths, base_lengths = 0.0, 0, [], []
        capped = {"adapter": [], "base": []}   # ran to the cap (a reply ending on its last
                                               # allowed token ended by itself)
        room = 2048 - config.sample_tokens - 8
        for i, messages in enumerate(prompts[: config.samples]):
            tokens_in = prompt_tokens(base, list(messages))[-room:]
            # KL(π ‖ π_ref) on the adapter's own samples, scored by the base in lockstep
            sampled, log_ratio, ended = _sample(policy, tokens_in, config.sample_tokens,
                                                config.temperature, np.random.default_rng(config.seed + i),
                                                judge=base)
            kl_sum += log_ratio
            kl_tokens += len(sampled)
            policy_lengths.append(len(sampled))
            capped["adapter"].append(not ended)
            from_base, _, base_ended = _sample(base, tokens_in, config.sample_tokens,
                                               config.temperature, np.random.default_rng(config.seed + i))
            base_lengths.append(len(from_base))
            capped["base"].append(not base_ended)
    finally:
        policy.close()
        base.close()
    mean_policy = float(np.mean(policy_lengths)) if policy_lengths else 0.0
    mean_base = float(np.mean(base_lengths)) if base_lengths else 0.0
    return {"samples": len(policy_lengths), "kl_per_token": kl_sum / kl_tokens if kl_tokens else 0.0,
            "mean_tokens_adapter": mean_policy, "mean_tokens_base": mean_base,
            "length_ratio": mean_policy / mean_base if mean_base else 1.0,
            "capped_share_adapter": float(np.mean(capped["adapter"])) if capped["adapter"] else 0.0,
            "capped_share_base": float(np.mean(capped["base"])) if capped["base"] else 0.0}


# --- the decision -----------------------------------------------------------------------------
def evaluate(scorer, tokenizer, heldout, base_gguf, adapter_gguf, prompts, dpo_settings,
             config: GateConfig | None = None) -> dict:
    from .dpo import tokenize_pair
    config = config or GateConfig()
    report = {"config": config.to_dict()}
    if heldout:
        examples = [tokenize_pair(p, tokenizer, dpo_settings) for p in heldout]
        margins = heldout_margins(scorer, tokenizer, examples, config.batch_pairs)
        report["reward"] = implicit_reward_report(margins)
        picked = strongest(margins["h"], config.published_pairs)
        published = published_margins(base_gguf, adapter_gguf, [examples[i] for i in picked],
                                      config.threads)
        noise = [(bc - margins["base_logps"][i][0]) - (br - margins["base_logps"][i][1])
                 for i, (bc, br) in zip(picked, published["base"])]
        report["reward"]["published"] = published_report(
            [margins["h"][i] for i in picked], published["h"], noise, config.published_noise_factor)
    report["drift"] = sample_drift(base_gguf, adapter_gguf, prompts, config)
    report["publish"], report["reasons"] = decide(report, config)
    return report


def decide(report: dict, config: GateConfig) -> tuple[bool, list[str]]:
    reasons = []
    reward = report.get("reward")
    if not reward or reward["heldout_pairs"] < config.min_heldout_pairs:
        reasons.append("not enough held-out pairs to tell whether the adapter is better "
                       "(pairs from at least two conversations are needed)")
    else:
        if not reward["implicit_reward_accuracy"] > 0.5 or not reward["mean_h"] > 0:
            reasons.append(f"not better on held-out conversations (implicit-reward accuracy "
                           f"{reward['implicit_reward_accuracy']:.2f}, mean margin {reward['mean_h']:+.3f})")
        elif reward["policy_accuracy"] < reward["base_accuracy"]:
            reasons.append(f"prefers the chosen replies less often than the base "
                           f"({reward['policy_accuracy']:.2f} < {reward['base_accuracy']:.2f})")
        if config.max_p_value is not None and reward["sign_test_p"] > config.max_p_value:
            reasons.append(f"improvement not significant (p = {reward['sign_test_p']:.3f})")
        published = reward.get("published")
        if published and published["slope"] is not None and published["slope"] < 0:
            reasons.append(f"the exported file, which the chat would use, moves held-out pairs "
                           f"the other way from the trained weights (the same direction on "
                           f"{published['same_sign_share']:.0%} of {published['checked']}, "
                           f"{published['slope']:+.2f} times as strong): the export does not "
                           "carry them over")
    drift = report.get("drift") or {}
    if drift.get("kl_per_token", 0.0) > config.max_kl_per_token:
        reasons.append(f"drifts too far from the base model (KL {drift['kl_per_token']:.3f} > "
                       f"{config.max_kl_per_token} nats per token)")
    ratio = drift.get("length_ratio", 1.0)
    if not 1 / config.max_length_ratio <= ratio <= config.max_length_ratio:
        reasons.append(f"changes reply length too much (×{ratio:.2f}; limit ×{config.max_length_ratio})")
    capped = drift.get("capped_share_adapter", 0.0) - drift.get("capped_share_base", 0.0)
    if capped > config.max_capped_increase:
        reasons.append(f"writes longer replies: {drift['capped_share_adapter']:.0%} of its samples "
                       f"ran to the {config.sample_tokens}-token cap against "
                       f"{drift.get('capped_share_base', 0.0):.0%} of the base's")
    return not reasons, reasons
