"""Stage 2a: the chat GGUF → a cached Hugging Face checkpoint that DPO can train on.

transformers can read a GGUF (it dequantises every tensor to float32, ≈ 15 s for
SmolLM2), but the model it returns still carries the GGUF quantizer: saving or training
it raises. Recipe measured on the development machines: load, detach the quantizer, save once, and
train on the *reloaded* checkpoint (it reloads in 0.1 s with identical logits).

The cache key is the GGUF's resolved path, size and modification time, so replacing or
editing the model file makes a new checkpoint. Checkpoints hold only the public base
weights (no user data); they live under the data folder so *Delete everything* removes
them too. Only the ``keep`` most recently used are kept.

    path = ensure_checkpoint(gguf, CheckpointConfig(cache_dir=data_dir / "cache" / "hf"))
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

MARKER = "glance-checkpoint.json"


@dataclass
class CheckpointConfig:
    cache_dir: Path
    keep: int = 2            # checkpoints kept (least recently used removed first)


def checkpoint_key(gguf_path: str | os.PathLike) -> str:
    path = Path(gguf_path).expanduser().resolve()
    stat = path.stat()
    text = f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cached_checkpoint(gguf_path, config: CheckpointConfig) -> Path | None:
    target = Path(config.cache_dir) / checkpoint_key(gguf_path)
    return target if (target / MARKER).exists() else None


def ensure_checkpoint(gguf_path: str | os.PathLike, config: CheckpointConfig,
                      log=print, tokenizer: bool = True) -> Path:
    """The checkpoint directory for ``gguf_path``, converting it once if needed
    (``tokenizer=False``: the weights only, when token ids come from elsewhere)."""
    gguf_path = Path(gguf_path).expanduser().resolve()
    cache = Path(config.cache_dir)
    cache.mkdir(parents=True, exist_ok=True, mode=0o700)
    target = cache / checkpoint_key(gguf_path)
    # One converter at a time (a test run and a nightly job may race for the same file).
    from feedback_store.locks import lock_file
    with open(cache / ".lock", "a+") as lock:
        lock_file(lock, blocking=True)
        if not (target / MARKER).exists() or (
                tokenizer and not json.loads((target / MARKER).read_text()).get("tokenizer", True)):
            # First: a conversion that failed or was killed left a float32 copy of a
            # model (GBs) that a failing conversion each night would add to, up to a full disk.
            _remove_stale_conversions(cache)
            _convert(gguf_path, target, log, tokenizer)
        os.utime(target / MARKER)   # last use, for pruning
        _prune(cache, config.keep, target)
    return target


def _convert(gguf_path: Path, target: Path, log, with_tokenizer: bool = True) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    log(f"Converting {gguf_path.name} for training (once; later runs reuse it)…")
    staging = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    folder, name = str(gguf_path.parent), gguf_path.name
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        # The GGUF quantizer stays attached after dequantising; save_pretrained and the
        # trainers refuse a model that still says it is quantized.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.is_quantized = False
        model.save_pretrained(staging)
        if with_tokenizer:
            AutoTokenizer.from_pretrained(folder, gguf_file=name).save_pretrained(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    info = {"tokenizer": with_tokenizer, "gguf": str(gguf_path), "size": gguf_path.stat().st_size,
            "mtime_ns": gguf_path.stat().st_mtime_ns,
            "model_type": model.config.model_type,
            "seconds": round(time.perf_counter() - started, 2)}
    (staging / MARKER).write_text(json.dumps(info, indent=2))
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging, target)
    log(f"Converted in {info['seconds']} s.")


def _prune(cache: Path, keep: int, current: Path) -> None:
    done = [p for p in cache.iterdir() if (p / MARKER).exists()]
    done.sort(key=lambda p: (p / MARKER).stat().st_mtime, reverse=True)
    for old in done[max(keep, 1):]:
        if old != current:
            shutil.rmtree(old, ignore_errors=True)
    _remove_stale_conversions(cache)


def _remove_stale_conversions(cache: Path) -> None:
    for stale in cache.glob(".*.tmp-*"):     # a conversion killed half-way
        pid = stale.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or not _alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def load_checkpoint(path: Path, device: str = "cpu"):
    """(model, tokenizer) from a checkpoint made by :func:`ensure_checkpoint`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device)
    return model, tokenizer
