"""Stage 3: a PEFT LoRA adapter → a GGUF LoRA adapter that llama.cpp loads.

    export_adapter(adapter_dir, "adapter.gguf", base_config)

What llama.cpp expects (read from its loader and converter, written here from scratch):
- file type ``general.type = "adapter"``, ``adapter.type = "lora"``,
  ``adapter.lora.alpha`` (llama.cpp scales by alpha / rank, as PEFT does; rsLoRA's
  alpha / √rank is folded into alpha), ``general.architecture`` equal to the base's;
- per adapted matrix ``blk.{i}.{name}.weight.lora_a`` = PEFT ``lora_A`` (rank × in) and
  ``…lora_b`` = PEFT ``lora_B`` (out × rank), names as in :data:`GGUF_NAMES`;
- for the ``llama`` architecture the converter permutes the rows of q and k
  (interleaved rotary halves); an adapter's q/k ``lora_b`` needs the same permutation,
  with the head count of q and of k respectively. qwen2, qwen3 and gemma3 use the
  NeoX rotary layout and are written unpermuted.

Also :func:`write_float_gguf`: a copy of a quantised GGUF with every tensor dequantised
to F16/F32 (same metadata) — the clean base for measuring an adapter in llama.cpp without
quantisation noise (tests and the parity check).
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

GGUF_NAMES = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
# transformers model_type -> llama.cpp architecture, and whether q/k rows are permuted
ARCHITECTURES = {"llama": ("llama", True), "mistral": ("llama", True), "qwen2": ("qwen2", False),
                 "qwen3": ("qwen3", False), "gemma3": ("gemma3", False),
                 "gemma3_text": ("gemma3", False)}
# A model's GGUF says its llama.cpp architecture (general.architecture): the nightly job
# asks this before hours of training that could not be exported.
EXPORTABLE = {architecture for architecture, _ in ARCHITECTURES.values()}
_PEFT_KEY = re.compile(r"layers\.(\d+)\.((?:self_attn|mlp)\.\w+)\.lora_([AB])\.weight$")


class ExportError(ValueError):
    pass


@dataclass
class ExportConfig:
    dtype: str = "f32"      # f32 | f16
    scale: float = 1.0      # multiplies the adapter (-1 gives the opposite one; tests use it)


def permute_rows(matrix: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's q/k row order: within each head, interleaved rotary pairs."""
    rows = matrix.shape[0]
    return (matrix.reshape(heads, 2, rows // heads // 2, *matrix.shape[1:])
            .swapaxes(1, 2).reshape(matrix.shape))


def gguf_tensors(peft_state: dict, base_config: dict, scale: float = 1.0) -> dict[str, np.ndarray]:
    """PEFT ``lora_A``/``lora_B`` arrays (numpy, keyed as in adapter_model.safetensors)
    → GGUF tensor name → array (llama.cpp names, q/k permuted where needed)."""
    model_type = base_config.get("model_type")
    if model_type not in ARCHITECTURES:
        raise ExportError(f"Cannot export an adapter for a {model_type!r} model: Glance knows "
                          f"{', '.join(sorted(ARCHITECTURES))}.")
    _, permute = ARCHITECTURES[model_type]
    heads = base_config["num_attention_heads"]
    kv_heads = base_config.get("num_key_value_heads") or heads
    out = {}
    for key, value in peft_state.items():
        match = _PEFT_KEY.search(key)
        if not match:
            raise ExportError(f"Unexpected tensor {key} in the adapter (only LoRA on "
                              f"{', '.join(GGUF_NAMES)} can be exported).")
        layer, module, which = int(match.group(1)), match.group(2), match.group(3)
        if module not in GGUF_NAMES:
            raise ExportError(f"The adapter changes {module}, which llama.cpp adapters cannot hold.")
        array = np.asarray(value, dtype=np.float32)
        if which == "B":
            array = array * np.float32(scale)
            if permute and module == "self_attn.q_proj":
                array = permute_rows(array, heads)
            elif permute and module == "self_attn.k_proj":
                array = permute_rows(array, kv_heads)
        name = f"blk.{layer}.{GGUF_NAMES[module]}.weight.lora_{which.lower()}"
        out[name] = np.ascontiguousarray(array)
    names = {n.rsplit(".", 1)[0] for n in out}
    for stem in names:
        if f"{stem}.lora_a" not in out or f"{stem}.lora_b" not in out:
            raise ExportError(f"{stem} has only half of its LoRA pair.")
    return out


def lora_alpha(adapter_config: dict) -> float:
    alpha, rank = float(adapter_config["lora_alpha"]), int(adapter_config["r"])
    if adapter_config.get("use_rslora"):
        alpha *= math.sqrt(rank)      # PEFT scales by alpha/√r, llama.cpp by alpha/r
    if adapter_config.get("rank_pattern") or adapter_config.get("alpha_pattern"):
        raise ExportError("Per-module ranks or alphas cannot be written as one GGUF adapter.")
    return alpha


def export_adapter(adapter_dir: Path, out_path: Path, base_config: dict | Path | None = None,
                   config: ExportConfig | None = None, metadata: dict | None = None) -> dict:
    """Write ``out_path`` from a PEFT adapter folder. ``base_config`` is the base model's
    config.json (a dict or a path; default: the folder named in adapter_config.json)."""
    import gguf
    from safetensors.numpy import load_file

    config = config or ExportConfig()
    adapter_dir, out_path = Path(adapter_dir), Path(out_path)
    adapter_config = json.loads((adapter_dir / "adapter_config.json").read_text())
    if base_config is None:
        base_config = Path(adapter_config["base_model_name_or_path"]) / "config.json"
    if not isinstance(base_config, dict):
        path = Path(base_config)
        base_config = json.loads((path / "config.json" if path.is_dir() else path).read_text())
    base_config = base_config.get("text_config", base_config) if base_config.get(
        "model_type") not in ARCHITECTURES else base_config
    tensors = gguf_tensors(load_file(adapter_dir / "adapter_model.safetensors"), base_config,
                           config.scale)
    architecture = ARCHITECTURES[base_config["model_type"]][0]
    alpha = lora_alpha(adapter_config)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    staging = out_path.with_name(out_path.name + ".partial")
    writer = gguf.GGUFWriter(str(staging), architecture)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    writer.add_name("Glance personal adapter")
    for key, value in (metadata or {}).items():
        writer.add_string(f"glance.{key}", str(value))
    dtype = np.float16 if config.dtype == "f16" else np.float32
    for name in sorted(tensors, key=_tensor_order):
        writer.add_tensor(name, tensors[name].astype(dtype))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    staging.replace(out_path)
    return {"path": str(out_path), "architecture": architecture, "alpha": alpha,
            "rank": int(adapter_config["r"]), "tensors": len(tensors)}


def _tensor_order(name: str):
    parts = name.split(".")
    return int(parts[1]), name


# --- a float copy of a quantised base --------------------------------------------------------
def write_float_gguf(source: Path, target: Path, dtype: str = "f16") -> Path:
    """Copy ``source`` with every tensor dequantised (2-D and larger to ``dtype``, vectors
    to F32), keeping every metadata key. Written to a temporary name, then renamed."""
    import gguf
    from gguf.quants import dequantize

    reader = gguf.GGUFReader(str(source))
    architecture = reader.fields["general.architecture"].contents()
    staging = Path(str(target) + ".partial")
    writer = gguf.GGUFWriter(str(staging), architecture)
    file_type = gguf.LlamaFileType.MOSTLY_F16 if dtype == "f16" else gguf.LlamaFileType.ALL_F32
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        if name == "general.file_type":
            writer.add_uint32(name, int(file_type))
            continue
        main = field.types[0]
        if main == gguf.GGUFValueType.ARRAY:
            writer.add_key_value(name, field.contents(), main, sub_type=field.types[-1])
        else:
            writer.add_key_value(name, field.contents(), main)
    float_type = np.float16 if dtype == "f16" else np.float32
    for tensor in reader.tensors:
        values = dequantize(tensor.data, tensor.tensor_type)
        shape = tuple(int(n) for n in reversed(tensor.shape.tolist()))
        values = np.asarray(values, dtype=np.float32).reshape(shape)
        writer.add_tensor(tensor.name, values.astype(float_type if values.ndim > 1 else np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    staging.replace(target)
    return Path(target)
