"""The compare panel as a chat: the system prompt, the model's chat template (shown), and the
history of earlier turns, listed above the answers. With *continue the conversation* ticked the
earlier turns go with the question, each column continuing its own conversation: the base model
sees its own earlier answers, base + adapter its own (the engine builds the messages:
session.conversation); unticked (the default) each question stands alone, as `loralab generate
--chat` asks it."""

from __future__ import annotations

from pyodide.ffi import create_proxy  # type: ignore[import-not-found]
from pyscript import document  # type: ignore[import-not-found]

from .page import el, state

COLUMNS = (("base", "Base"), ("adapter", "Base + adapter"), ("onnx", "ONNX Runtime Web"))


def has_template() -> bool:
    return bool((state.get("model") or {}).get("chat_template")) or state.get("mode") == "onnx"


def context() -> dict:
    """The request's system prompt and history (earlier turns) when the conversation is kept."""
    if not has_template():
        return {}
    system = el("gen-system").value.strip()
    keep = el("gen-history").checked
    turns = state.get("chat", []) if keep else []
    # (without WebGPU the one column answering is ONNX Runtime Web's: its answers are the history)
    key = "onnx" if state.get("mode") == "onnx" else None
    history = [{"user": t["user"], "base": t.get(key or "base"), "adapter": t.get("adapter")} for t in turns]
    return {"system": system, "history": history}


def start_turn() -> None:
    """A new question: the turns so far move into the history list above the answers."""
    render_history()


def finish_turn(question: str, answers: dict[str, str | None]) -> None:
    state.setdefault("chat", []).append({"user": question, **answers})
    el("chat-clear").disabled = False


def render_history() -> None:
    node = el("chat-history")
    node.replaceChildren()
    for turn in state.get("chat", []):
        item = document.createElement("li")
        asked = document.createElement("p")
        asked.className = "asked"
        asked.textContent = turn["user"]
        answers = document.createElement("div")
        answers.className = "compare"
        for key, title in COLUMNS:
            if turn.get(key) is None:
                continue
            box = document.createElement("div")
            head = document.createElement("h3")
            head.textContent = title
            text = document.createElement("pre")
            text.textContent = turn[key]
            box.append(head, text)
            answers.append(box)
        item.append(asked, answers)
        node.append(item)
    node.hidden = not state.get("chat")


def on_clear(event) -> None:
    """New chat: the history goes; the last answers stay shown until the next question."""
    state["chat"] = []
    render_history()
    el("chat-clear").disabled = True


def show_template(template: str | None) -> None:
    """The loaded model's chat template, as the questions go through it; without one, no system
    prompt or conversation (each question is the plain text)."""
    el("chat-template").textContent = template or "This model has no chat template: each question is given as plain text."
    for testid in ("gen-system", "gen-history"):
        el(testid).disabled = not template
    el("gen-system").placeholder = ("Optional: instructions every answer follows (through the chat template)"
                                    if template else "This model has no chat template, so no system prompt")


def wire() -> None:
    proxy = create_proxy(on_clear)
    state["proxies"].append(proxy)
    el("chat-clear").addEventListener("click", proxy)
