"""The chat engine: llama-cpp-python with the model's own chat template. No Qt.

One engine holds one loaded model. ``generate`` streams a reply for a list of chat
messages, calling ``on_token`` for each piece of text and stopping early when
``cancel`` is set. Before generating, the oldest turns are dropped until the prompt
fits the context window (the caller shows a note); a single message that cannot fit
is refused with a clear error instead of a crash.
"""
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from align.templates import TemplateRefused, TemplateRules, template_rules
from .models import (LoadFailed, ModelError, available_memory_bytes, default_model_path, inspect_model,
                     require_chat_template)

DEFAULT_SYSTEM_PROMPT = "You are Glance, a helpful, concise assistant."
# The context a model starts with, and how far it may grow (by its own limit, this, and
# the memory free for its cache). Starting small keeps start-up fast (a 8 192-token
# context costs SmolLM2 ≈ 0.1 s and 135 MB more to create); a conversation that needs
# more reloads the context once, larger. Fixed at 2 048, a pasted page was refused with
# "choose a model with a longer context" on models that had 8 k or 128 k.
START_CONTEXT = 2048
MAX_CONTEXT = 32_768


@dataclass
class GenerationSettings:
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    temperature: float = 0.7
    top_p: float = 0.95
    max_tokens: int = 512
    seed: int | None = None  # None: a fresh random seed every reply

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict | None) -> "GenerationSettings":
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in (data or {}).items() if k in known})

    def validate(self) -> None:
        if not 0.0 <= self.temperature <= 2.0:
            raise EngineError("Temperature must be between 0 and 2.")
        if not 0.0 < self.top_p <= 1.0:
            raise EngineError("top_p must be greater than 0 and at most 1.")
        if not 1 <= self.max_tokens <= 32768:
            raise EngineError("Max tokens must be between 1 and 32768.")


@dataclass
class Reply:
    text: str
    model: str
    tokens: int
    prompt_tokens: int
    ttft_s: float | None
    tokens_per_s: float | None
    finish_reason: str        # stop | length | cancelled
    dropped_turns: int = 0    # oldest turns left out to fit the context
    settings: dict = field(default_factory=dict)


class EngineError(Exception):
    """Generation cannot go ahead; str() says why and what to do."""


class EmptyPrompt(EngineError):
    def __init__(self):
        super().__init__("The message is empty. Type something to send.")


class PromptTooLong(EngineError):
    def __init__(self, tokens: int, room: int, system_tokens: int = 0, memory_bound: bool = False):
        if system_tokens * 2 >= room:      # the system prompt is what does not fit
            text = (f"The system prompt alone is {system_tokens} tokens long, and the model's "
                    f"context leaves room for {room} with the reply. Shorten the system prompt "
                    "(Settings…), lower 'max tokens', or choose a model with a longer context.")
        else:
            text = (f"This message is {tokens} tokens long, but the model's context leaves room "
                    f"for {room}. Shorten it, lower 'max tokens', or choose a model with a "
                    "longer context.")
        if memory_bound:
            text += (" (The model allows a longer context, but this computer has too little "
                     "free memory for it now: closing other programs may make room.)")
        super().__init__(text)
        self.tokens, self.room, self.system_tokens = tokens, room, system_tokens


class ChatEngine:
    def __init__(self, model_path: str | os.PathLike | None = None, n_ctx: int = START_CONTEXT,
                 n_threads: int | None = None, max_ctx: int | None = MAX_CONTEXT):
        self.n_ctx = n_ctx
        self.max_ctx = max_ctx if max_ctx is not None else n_ctx   # (a test's fixed context)
        # llama-cpp's default, cpu_count // 2, is 1 on a 2-core machine, where 2 threads are
        # 1.6x faster (FACTS); elsewhere it is the physical cores of most machines, and 2
        # left a 16-core one reading a long prompt on two.
        self.n_threads = n_threads or max(2, (os.cpu_count() or 2) // 2)
        self.llm = None
        self.model_info: dict | None = None
        self._formatter = None
        self._rules = TemplateRules()
        self._token_counts: dict[str, int] = {}   # a message's own tokens (fit_to_context)
        self._lock = threading.Lock()  # a Llama context is not thread-safe
        # The personal LoRA adapter (align --nightly publishes it): checked before every
        # reply, so a newly published version is used without a restart.
        self.adapters_dir: Path | None = None    # <data dir>/adapters; None: never use one
        self.adapter_enabled = True              # False: chat with the base model
        self.adapter_version: str | None = None  # the version in use (None: base model)
        self.adapter_error: str | None = None    # why the wanted adapter is not in use
        self._failed_adapter: str | None = None  # its file: not tried again at every reply
        self._adapter = None                     # (llama.cpp handle, file) while attached
        self._abort_callback = None              # while a prompt is read (_abort_prompt_on)
        self._prompt_aborted = False             # ... and whether it stopped the reading
        self.load(model_path or default_model_path())

    @property
    def model_name(self) -> str:
        return Path(self.model_info["path"]).name if self.model_info else "none"

    def load(self, path: str | os.PathLike) -> dict:
        """Load a model. On any failure the previous model stays loaded and usable."""
        info = inspect_model(path)
        require_chat_template(info)
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter
        context = min(self.n_ctx, info["context_length"] or self.n_ctx)
        try:
            llm = self._llama(info["path"], context)
        except Exception as error:
            raise LoadFailed(f"llama.cpp could not load {Path(path).name}: {error}. "
                             "The previous model is still in use. The file itself looks "
                             "complete: if memory was short, close other programs and "
                             "choose it again.") from error
        # The same formatter llama-cpp builds from the GGUF, so token counts match.
        eos, bos = llm.token_eos(), llm.token_bos()
        try:
            formatter = Jinja2ChatFormatter(
                template=info["chat_template"],
                eos_token=llm._model.token_get_text(eos) if eos != -1 else "",
                bos_token=llm._model.token_get_text(bos) if bos != -1 else "",
                stop_token_ids=[eos] if eos != -1 else None)
            rules = template_rules(lambda messages: formatter(messages=messages))
        except Exception as error:
            llm.close()
            if isinstance(error, TemplateRefused):
                raise ModelError(f"The chat template of {Path(path).name} cannot format even "
                                 "a one-message conversation, so Glance cannot chat with it. "
                                 "The previous model is still in use.") from error
            raise ModelError(f"The chat template of {Path(path).name} does not compile "
                             f"({error}), so Glance cannot chat with it. The previous model "
                             "is still in use.") from error
        llm.chat_handler = formatter.to_chat_handler()
        with self._lock:
            old, self.llm = self.llm, llm
            self.model_info, self._formatter, self._rules = info, formatter, rules
            self._token_counts = {}            # (another model, another tokenizer)
            self._adapter, self.adapter_version = None, None  # freed with the old model
            self.adapter_error = self._failed_adapter = None
        if old is not None:
            old.close()
        return info

    def _llama(self, path: str, n_ctx: int):
        """A llama.cpp context. The callers set its ``chat_handler`` to the template's
        formatter (the one prompts are counted with and the nightly job trains on): left
        alone, llama-cpp-python swaps a template it recognises (ChatML, Mistral-instruct,
        Llama-3) for a formatter of its own, whose spacing and BOS differ."""
        from llama_cpp import Llama
        return Llama(model_path=path, n_ctx=n_ctx, n_threads=self.n_threads,
                     n_threads_batch=self.n_threads, verbose=False)

    # --- context size ----------------------------------------------------------------
    @property
    def context_limit(self) -> int:
        """The most tokens of context this model may get here."""
        trained = self.model_info.get("context_length") or self.llm.n_ctx()
        return max(self.llm.n_ctx(), min(trained, self.max_ctx))

    @property
    def reachable_context(self) -> int:
        """The largest context the engine can grow to now: :attr:`context_limit`, less what
        free memory cannot hold (its cache in half the memory free, at most). A message is
        checked against this before it is stored: checked against the model's limit, a
        pasted page was stored and then refused when the context could not grow."""
        current, limit = self.llm.n_ctx(), self.context_limit
        per_token = _cache_bytes_per_token(self.llm.metadata)
        if current >= limit or per_token is None:
            return current                 # (the cache's size cannot be told: no growth)
        free = available_memory_bytes()
        target = current
        while target < limit:
            step = min(target * 2, limit)
            if free is not None and (step - current) * per_token > free // 2:
                break
            target = step
        return target

    def _grow_context(self, messages: list[dict], max_tokens: int) -> None:
        """A larger context when the conversation and its reply do not fit the current
        one and the model allows more (lock held). Reloading costs about what loading
        did; the prompt is read afresh anyway, as it is new to the cache."""
        current = self.llm.n_ctx()
        if current >= self.context_limit:
            return
        needed = sum(self._own_tokens(m) + 8 for m in messages) + max_tokens
        if needed <= current - current // 8:
            return
        kept = [messages[-1]] + [m for m in messages[:1] if m["role"] == "system" and len(messages) > 1]
        if sum(self._own_tokens(m) for m in kept) + min(max_tokens, self.context_limit // 4) \
                > self.context_limit:
            return                         # refused however large: not worth a reload
        target = current
        while target < needed + needed // 4 and target < self.context_limit:
            target *= 2
        target = min(target, self.context_limit, self.reachable_context)
        if target <= current:
            return
        try:
            llm = self._llama(self.model_info["path"], target)
        except Exception:  # noqa: BLE001 - the current context stays, and turns are dropped
            return
        llm.chat_handler = self._formatter.to_chat_handler()
        old, self.llm = self.llm, llm
        self._adapter, self.adapter_version = None, None   # attached again by _sync_adapter
        old.close()

    # --- prompt fitting --------------------------------------------------------------
    def count_prompt_tokens(self, messages: list[dict]) -> int:
        prompt = self._formatter(messages=self._rules.apply(messages)).prompt
        return len(self.llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True))

    def fit_to_context(self, messages: list[dict], max_tokens: int,
                       n_ctx: int | None = None) -> tuple[list[dict], int, int]:
        """Drop the oldest turns until the prompt leaves room for the reply.

        Returns (messages that fit, number of turns dropped, prompt tokens). The system
        prompt and the newest message are always kept; if they alone do not fit,
        PromptTooLong is raised. The kept history never starts on an assistant turn.
        ``n_ctx``: fit a context of that size rather than the current one (the largest
        it may grow to, for a message not sent yet).
        """
        system = [m for m in messages[:1] if m["role"] == "system"]
        turns = messages[len(system):]
        n_ctx = n_ctx or self.llm.n_ctx()
        # Keep at least a quarter of the context for the reply, even if max_tokens is larger.
        reserve = min(max_tokens, n_ctx // 4)
        room = n_ctx - reserve

        def count(start: int) -> int:
            return self.count_prompt_tokens(system + turns[start:])
        # The usual case, everything fits, is counted exactly; a history whose messages
        # alone are more than the room (counted once each, then cached) is not: counting
        # all of it took 0.15 s a send in a chat of 300 messages.
        if sum(self._own_tokens(m) for m in messages) <= room:
            tokens = count(0)
            if tokens <= room:
                return system + turns, 0, tokens
        # Where the kept history may start: the first turn, each turn that is not the
        # assistant's, and the newest.
        starts = [0] + [i for i in range(1, len(turns))
                        if turns[i]["role"] != "assistant" or i == len(turns) - 1]
        newest = count(starts[-1])
        if newest > room:
            system_tokens = self.count_prompt_tokens(
                system + [{"role": "user", "content": "?"}]) if system else 0
            raise PromptTooLong(newest, room, system_tokens)
        # Counting the whole prompt once per dropped turn was quadratic (12 s per count in a
        # 300-message chat). Each turn's own tokens (counted once, cached) plus the
        # template's wrapping per turn (as measured on the newest) estimate where the kept
        # history starts; exact counts then settle it, each on a prompt that about fits.
        wrapping = (newest - sum(self._own_tokens(m) for m in system + turns[starts[-1]:])) \
            / max(1, len(system) + len(turns) - starts[-1])
        estimate, index = newest, len(starts) - 1
        for turn in range(starts[-1] - 1, -1, -1):
            estimate += self._own_tokens(turns[turn]) + wrapping
            if estimate > room:
                break
            if turn == starts[index - 1]:
                index -= 1
        tokens = count(starts[index])
        if tokens <= room:                     # as few dropped as fit
            while index > 0 and (more := count(starts[index - 1])) <= room:
                index, tokens = index - 1, more
        else:
            while tokens > room:               # (the newest alone fits: this ends)
                index += 1
                tokens = count(starts[index])
        return system + turns[starts[index]:], starts[index], tokens

    def _own_tokens(self, message: dict) -> int:
        """A message's text alone in tokens, for estimating. Cached by text: in a long
        chat every send counts the same old turns again."""
        text = message["content"]
        count = self._token_counts.get(text)
        if count is None:
            if len(self._token_counts) >= 4096:
                self._token_counts.clear()
            count = len(self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))
            self._token_counts[text] = count
        return count

    # --- generation ------------------------------------------------------------------
    def generate(self, messages: list[dict], settings: GenerationSettings,
                 on_token: Callable[[str], None] | None = None,
                 cancel: threading.Event | None = None) -> Reply:
        """Stream a reply to ``messages`` (system prompt included by the caller)."""
        settings.validate()
        if not messages or not messages[-1]["content"].strip():
            raise EmptyPrompt()
        with self._lock:
            # The clock starts before prompt fitting: its cost is part of the user's wait.
            started = time.perf_counter()
            self._grow_context(messages, settings.max_tokens)
            self._sync_adapter()
            fitted, dropped, prompt_tokens = self.fit_to_context(messages, settings.max_tokens)
            pieces: list[str] = []
            finish = "stop"
            first_at = last_at = None
            if settings.seed is not None:
                # Reusing a cached prompt prefix changes the float rounding of the logits
                # (batch vs single-token evaluation), so a fixed seed would not give the
                # same reply twice. Evaluate the whole prompt afresh when asked for one.
                self.llm.reset()
            stream = self.llm.create_chat_completion(
                messages=self._rules.apply(fitted), stream=True, temperature=settings.temperature,
                top_p=settings.top_p, max_tokens=settings.max_tokens,
                seed=settings.seed if settings.seed is not None else int.from_bytes(os.urandom(4), "little"))
            self._prompt_aborted = False
            self._abort_prompt_on(cancel)
            try:
                for chunk in stream:
                    self._abort_prompt_on(None)       # the prompt is read: pieces from here
                    choice = chunk["choices"][0]
                    piece = choice["delta"].get("content")
                    if piece:
                        last_at = time.perf_counter()
                        if first_at is None:
                            first_at = last_at
                        pieces.append(piece)
                        if on_token is not None:
                            on_token(piece)
                    if choice.get("finish_reason"):
                        finish = choice["finish_reason"]
                    if cancel is not None and cancel.is_set():
                        finish = "cancelled"
                        break
            except RuntimeError:               # llama_decode aborted by _abort_prompt_on
                if not self._prompt_aborted:
                    raise
                finish = "cancelled"
                self.llm.reset()               # its cache holds a prompt read part-way
            finally:
                self._abort_prompt_on(None)
                stream.close()
        tokens = len(pieces)
        decode_s = (last_at - first_at) if first_at is not None else 0.0
        return Reply(
            text="".join(pieces), model=self.model_name, tokens=tokens,
            prompt_tokens=prompt_tokens,
            ttft_s=(first_at - started) if first_at is not None else None,
            tokens_per_s=((tokens - 1) / decode_s) if tokens > 1 and decode_s > 0 else None,
            finish_reason=finish, dropped_turns=dropped, settings=settings.to_dict())

    def _abort_prompt_on(self, cancel: threading.Event | None) -> None:
        """Until the first piece, a cancel also stops llama.cpp reading the prompt.

        The prompt is read in one call that the check between streamed pieces cannot
        reach: a long chat on a big model held Stop (and closing the window) for as long
        as it took, up to minutes on a CPU. llama.cpp asks an abort callback between the
        steps of its computation. A Python callback costs a few percent of decoding speed
        (≈ 600 calls a token), so it is set only while the prompt is read."""
        if cancel is None and self._abort_callback is None:
            return                             # (every piece asks)
        import llama_cpp
        if cancel is None:
            llama_cpp.llama_set_abort_callback(self.llm._ctx.ctx,
                                               llama_cpp.ggml_abort_callback(0), None)
            self._abort_callback = None
            return
        def abort(_data) -> bool:
            if cancel.is_set():
                self._prompt_aborted = True    # (any other error is not a cancel)
            return self._prompt_aborted
        # Kept on self: llama.cpp holds only the C pointer.
        self._abort_callback = llama_cpp.ggml_abort_callback(abort)
        llama_cpp.llama_set_abort_callback(self.llm._ctx.ctx, self._abort_callback, None)

    # --- the personal adapter ---------------------------------------------------------
    def use_adapters(self, directory: str | os.PathLike | None) -> None:
        """Use the active published adapter under ``directory`` (from the next reply)."""
        self.adapters_dir = Path(directory) if directory else None

    def set_adapter_enabled(self, enabled: bool) -> None:
        """False: the next replies come from the base model (the adapter stays published)."""
        self.adapter_enabled = bool(enabled)

    def _sync_adapter(self) -> None:
        """Attach the adapter that should be in use, if it is not already (lock held)."""
        import ctypes
        import llama_cpp
        from align.adapters import active_adapter
        info = None
        if self.adapters_dir is not None and self.adapter_enabled:
            info = active_adapter(self.adapters_dir, self.model_info["path"])
        wanted = info["path"] if info else None
        if wanted != self._failed_adapter:
            self.adapter_error = self._failed_adapter = None    # (another one, or none, wanted)
        elif wanted is not None:
            # Failed once: tried again at every reply, each try also threw the prompt
            # cache away. A new version (another file) is tried.
            wanted, info = None, None
        if wanted == (self._adapter[1] if self._adapter else None):
            return
        handle = None
        if wanted is not None:
            handle = llama_cpp.llama_adapter_lora_init(self.llm._model.model, wanted.encode())
            if not handle:
                self.adapter_error = (f"llama.cpp could not load the personal adapter "
                                      f"{info['version']}; replies come from the base model.")
                self._failed_adapter = wanted
                wanted, info = None, None
        ctx = self.llm._ctx.ctx
        if handle:
            adapters = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(handle)
            llama_cpp.llama_set_adapters_lora(ctx, adapters, 1, (ctypes.c_float * 1)(1.0))
        else:
            llama_cpp.llama_set_adapters_lora(ctx, None, 0, None)
        if self._adapter is not None:
            llama_cpp.llama_adapter_lora_free(self._adapter[0])
        self._adapter = (handle, wanted) if handle else None
        self.adapter_version = info["version"] if info else None
        self.llm.reset()   # cached prompt states were computed with the other weights

    def close(self) -> None:
        with self._lock:
            if self.llm is not None:
                self.llm.close()
                self.llm = None


def _cache_bytes_per_token(metadata: dict) -> int | None:
    """The KV cache's bytes per token of context (f16 keys and values), from the GGUF's
    metadata; None when it does not say."""
    arch = metadata.get("general.architecture")
    try:
        layers = int(metadata[f"{arch}.block_count"])
        heads = int(metadata[f"{arch}.attention.head_count"])
        kv_heads = int(metadata.get(f"{arch}.attention.head_count_kv", heads))
        key = int(metadata.get(f"{arch}.attention.key_length")
                  or int(metadata[f"{arch}.embedding_length"]) // heads)
        value = int(metadata.get(f"{arch}.attention.value_length") or key)
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None
    return layers * kv_heads * (key + value) * 2
