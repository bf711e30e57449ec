"""Glance's chat engine vs raw llama-cpp-python on the same GGUF, prompt, seed and threads.

Runs alternate in ABBA order (raw, glance, glance, raw, ...) so drift on a shared machine hits both
sides alike; medians are reported: tokens/s from 25 long replies, time to first token
from 60 one-token replies (fresh prompt evaluation each, as a fixed seed implies). Then the real window (offscreen) streams a reply while
a 5 ms QTimer records the largest gap between its ticks: how long the UI thread was busy;
then the same for a turn in a conversation already holding --history messages
(``ui_max_gap_long_ms``, measured once the opened conversation has settled on screen), and
the largest gap while that conversation is opened and laid out (``ui_open_long_ms``);
how long a row takes to show a 40 000-character reply with code (``show_long_reply_ms``),
how long the capture takes to measure where each of its characters is
(``measure_long_reply_ms``, at every re-wrap; ``measure_long_prose_ms`` for 37 000
characters of plain paragraphs),
and the end of such a reply streamed into the chat (``end_long_reply_ms``: the streamed
row becomes the committed reply's row); opening a chat whose message is a pasted
100 000-character document (``open_pasted_message_ms``: it shows its start);
last, fitting a 300-message chat into the prompt, on the first send and the next
(``fit_long_chat_first_ms``, ``fit_long_chat_next_ms``).

    .venv/bin/python bench/chat_throughput.py --json
"""
import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import GapMeter, print_result, scratch_dir  # noqa: E402

PROMPT = "Explain in detail how a bicycle works, part by part."
SYSTEM = "You are a helpful assistant."


def raw_run(llm, settings) -> tuple[float, float, int]:
    """The plain llama-cpp-python way: stream a chat completion and time it."""
    llm.reset()  # Glance evaluates the prompt afresh when a seed is fixed; so does this side
    started = time.perf_counter()
    first = last = None
    tokens = 0
    for chunk in llm.create_chat_completion(
            messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": PROMPT}],
            stream=True, temperature=settings.temperature, top_p=settings.top_p,
            max_tokens=settings.max_tokens, seed=settings.seed):
        if chunk["choices"][0]["delta"].get("content"):
            last = time.perf_counter()
            first = first or last
            tokens += 1
    return first - started, ((tokens - 1) / (last - first) if tokens > 1 else None), tokens


def glance_run(engine, settings) -> tuple[float, float, int]:
    reply = engine.generate([{"role": "system", "content": SYSTEM},
                             {"role": "user", "content": PROMPT}], settings)
    return reply.ttft_s, reply.tokens_per_s, reply.tokens


LONG_REPLY = ("A bicycle turns the push of your legs into motion: the pedals turn the crank, "
              "the chain carries it to the rear wheel, and the gears trade speed for force. ") * 4


LONG_MARKDOWN = ("A paragraph about **bicycles**, gears and `chains`, with a few more words.\n\n"
                 "```python\nfor gear in range(10):\n    print(gear)\n```\n\n") * 300


def show_long_reply_ms() -> float:
    """How long a row takes to show a 40 000-character reply with 300 code blocks (the
    markdown laid out and shaded, the row sized): opening a chat that holds one, or one
    render of it while it streams."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtWidgets import QApplication

    from app.ui.chat_view import MessageWidget
    from feedback_store import Message
    app = QApplication.instance() or QApplication([])
    times = []
    for _ in range(3):
        row = MessageWidget(Message("bench", "assistant", ""), [])
        row.resize(800, 600)
        row.show()
        app.processEvents()
        started = time.perf_counter()
        row.set_text(LONG_MARKDOWN)
        app.processEvents()
        times.append((time.perf_counter() - started) * 1000)
        row.deleteLater()
    return statistics.median(times)


LONG_PROSE = ("A bicycle turns the push of your legs into motion, and the gears trade speed "
              "for force as the road climbs. ") * 350


def measure_long_reply_ms(text: str = LONG_MARKDOWN) -> float:
    """How long the capture takes to measure where each character of that reply is (on
    the UI thread, once per rendering: at the end of a reply and at every re-wrap); with
    ``LONG_PROSE``, the same for 37 000 characters of plain paragraphs (long lines)."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtWidgets import QApplication

    from app.ui.chat_view import ReplyBrowser
    from app.ui.layout_probe import measure
    app = QApplication.instance() or QApplication([])
    browser = ReplyBrowser()
    browser.resize(800, 600)
    browser.set_markdown(text)
    browser.show()
    app.processEvents()
    times = []
    for _ in range(3):
        started = time.perf_counter()
        measure("bench", browser)
        times.append((time.perf_counter() - started) * 1000)
    browser.deleteLater()
    return statistics.median(times)


def end_long_reply_ms() -> float:
    """The chat view at the end of a streamed 40 000-character reply: the stream ends and
    the conversation is shown with the committed reply (the window's ``_on_reply``)."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtWidgets import QApplication

    from app.ui.chat_view import ChatView
    from app.ui.layout_probe import LayoutProbe
    from feedback_store import Message
    app = QApplication.instance() or QApplication([])
    view = ChatView(LayoutProbe())
    view.resize(900, 700)
    view.show()
    user = Message("bench", "user", "Show me loops.")
    times = []
    for _ in range(3):
        view.clear()
        view.show_messages([user], lambda _id: [], {})
        view.begin_stream(Message("bench", "assistant", ""))
        view.append_token(LONG_MARKDOWN)
        view._render_stream()
        app.processEvents()
        reply = Message("bench", "assistant", LONG_MARKDOWN, parent_id=user.id)
        started = time.perf_counter()
        view.end_stream()
        view.show_messages([user, reply], lambda _id: [], {})
        app.processEvents()
        times.append((time.perf_counter() - started) * 1000)
    view.deleteLater()
    return statistics.median(times)


def open_pasted_message_ms() -> float:
    """Opening a chat whose user message is a pasted 100 000-character document."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtWidgets import QApplication

    from app.ui.chat_view import ChatView
    from app.ui.layout_probe import LayoutProbe
    from feedback_store import Message
    app = QApplication.instance() or QApplication([])
    view = ChatView(LayoutProbe())
    view.resize(900, 700)
    view.show()
    pasted = "".join(f"Paragraph {n}: the river runs over the stones.\n" for n in range(2200))
    user = Message("bench", "user", pasted)
    reply = Message("bench", "assistant", "A long text.", parent_id=user.id)
    times = []
    for _ in range(3):
        view.clear()
        app.processEvents()
        started = time.perf_counter()
        view.show_messages([user, reply], lambda _id: [], {})
        app.processEvents()
        times.append((time.perf_counter() - started) * 1000)
    view.deleteLater()
    return statistics.median(times)


def fit_long_chat_ms(engine, messages: int = 300) -> tuple[float, float]:
    """Fitting a chat of ``messages`` messages (far more than the context holds) into the
    prompt: the first send after start, and the next (the messages' own token counts are
    cached by then)."""
    import random
    rng = random.Random(7)
    history = [{"role": "system", "content": SYSTEM}]
    for turn in range(messages // 2):
        history.append({"role": "user", "content": f"Question {turn}: "
                        + "lorem ipsum " * rng.randint(20, 120)})
        history.append({"role": "assistant", "content": "Answer "
                        + "dolor sit amet, " * rng.randint(20, 120)})
    history.append({"role": "user", "content": PROMPT})
    times = []
    for _ in range(2):
        started = time.perf_counter()
        engine.fit_to_context(history, 512)
        times.append((time.perf_counter() - started) * 1000)
    return times[0], times[1]


SETTLE_MS = 1500   # longer than capture's settle delay: the opened chat is measured and recorded


def ui_max_gap_ms(engine, max_tokens: int, history: int = 0) -> tuple[float, float | None]:
    """The largest UI gap over one turn, and (with ``history``) over opening the chat."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    os.environ["GLANCE_HOME"] = scratch_dir("glance-bench-")
    os.environ.setdefault("PYTHON_KEYRING_BACKEND", "keyring.backends.fail.Keyring")
    from PySide6.QtCore import QEventLoop, QTimer
    from PySide6.QtWidgets import QApplication

    from app.engine import GenerationSettings
    from app.ui.main_window import MainWindow
    from feedback_store import FeedbackStore
    app = QApplication.instance() or QApplication([])
    store = FeedbackStore.open()
    store.settings.set("generation", GenerationSettings(seed=1, max_tokens=max_tokens).to_dict())
    window = MainWindow(store, engine)
    window.show()
    # A loop of our own: QApplication.quit() would also close the window (Qt 6).
    loop = QEventLoop()
    if history:
        from feedback_store import Conversation, Message
        conversation = store.conversations.create(Conversation(title="long"))
        parent = None
        for turn in range(history // 2):
            question = store.conversations.add_message(Message(
                conversation.id, "user", f"Question {turn} about bicycles?", parent_id=parent))
            parent = store.conversations.add_message(Message(
                conversation.id, "assistant", LONG_REPLY, parent_id=question.id)).id
        def open_it():
            window.open_conversation(conversation.id)
            # Until the capture has measured the opened chat (SETTLE_MS after the last
            # layout change), which is part of opening it.
            QTimer.singleShot(SETTLE_MS * 3, loop.quit)
        opening = GapMeter()
        opening.start()
        QTimer.singleShot(0, open_it)
        loop.exec()
        open_gap = opening.stop_ms()
    else:
        open_gap = None
    meter = GapMeter()
    window.reply_finished.connect(lambda _: loop.quit())
    window.input.setPlainText(PROMPT)
    meter.start()
    window.send()
    loop.exec()
    gap = meter.stop_ms()
    window.close()
    store.close()
    return gap, open_gap


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=25)
    parser.add_argument("--max-tokens", type=int, default=160)
    parser.add_argument("--ttft-runs", type=int, default=60,
                        help="extra alternating 1-token runs: TTFT is ~0.15 s and noisy")
    parser.add_argument("--history", type=int, default=40,
                        help="messages already in the conversation for ui_max_gap_long_ms")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from llama_cpp import Llama

    from app.engine import ChatEngine, GenerationSettings
    from app.models import default_model_path
    model = default_model_path()
    settings = GenerationSettings(system_prompt=SYSTEM, temperature=0.7, top_p=0.95,
                                  max_tokens=args.max_tokens, seed=1234)
    engine = ChatEngine(model, n_ctx=2048, n_threads=2, max_ctx=None)   # as the raw one
    raw = Llama(model_path=str(model), n_ctx=2048, n_threads=2, n_threads_batch=2, verbose=False)
    raw_run(raw, settings)          # warm both (page cache, allocations)
    glance_run(engine, settings)
    results = {"raw": [], "glance": []}
    def alternate(count, run_settings, into, pick=lambda r: r):
        # ABBA order (raw, glance, glance, raw, ...) cancels "who ran just before" effects.
        for index in range(count):
            sides = (("raw", raw_run, raw), ("glance", glance_run, engine))
            for side, run, target in (sides if index % 2 == 0 else sides[::-1]):
                into[side].append(pick(run(target, run_settings)))
    alternate(args.runs, settings, results)
    # Time to first token from many short runs: each is cheap, and the median of 60
    # per side is far steadier than that of the 15 long runs above.
    first_token = GenerationSettings(system_prompt=SYSTEM, temperature=0.7, top_p=0.95,
                                     max_tokens=1, seed=1234)
    ttft = {"raw": [], "glance": []}
    alternate(args.ttft_runs, first_token, ttft, pick=lambda r: r[0])
    raw.close()

    def median(side, index):
        return statistics.median(r[index] for r in results[side])
    report = {
        "model": model.name,
        "runs": args.runs,
        "glance_tokens_per_s": median("glance", 1),
        "raw_tokens_per_s": median("raw", 1),
        "glance_ttft_s": statistics.median(ttft["glance"]),
        "raw_ttft_s": statistics.median(ttft["raw"]),
        "ttft_runs": args.ttft_runs,
        "tokens_per_reply": {"glance": median("glance", 2), "raw": median("raw", 2)},
    }
    report["throughput_ratio"] = report["glance_tokens_per_s"] / report["raw_tokens_per_s"]
    report["ttft_ratio"] = report["glance_ttft_s"] / report["raw_ttft_s"]
    report["ui_max_gap_ms"], _ = ui_max_gap_ms(engine, args.max_tokens)
    report["ui_max_gap_long_ms"], report["ui_open_long_ms"] = ui_max_gap_ms(
        engine, args.max_tokens, history=args.history)
    report["long_history_messages"] = args.history
    report["show_long_reply_ms"] = show_long_reply_ms()
    report["measure_long_reply_ms"] = measure_long_reply_ms()
    report["measure_long_prose_ms"] = measure_long_reply_ms(LONG_PROSE)
    report["long_prose_chars"] = len(LONG_PROSE)
    report["end_long_reply_ms"] = end_long_reply_ms()
    report["open_pasted_message_ms"] = open_pasted_message_ms()
    report["fit_long_chat_first_ms"], report["fit_long_chat_next_ms"] = fit_long_chat_ms(engine)
    report["long_reply_chars"] = len(LONG_MARKDOWN)
    engine.close()
    print_result(report, args.json, width=22)
    return 0


if __name__ == "__main__":
    sys.exit(main())
