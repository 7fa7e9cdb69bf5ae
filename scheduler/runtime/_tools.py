"""The governed tool loop: model → tools → model until the model ends its turn.

:class:`ToolLoop` runs the loop for an agent (``ctx.run_tools`` builds one).
Every model call goes through the gateway (route, estimate, admit, lease,
call, settle); every tool is a coroutine the agent gives, which does its side
effects through the context's governed operations (``FileOps.write`` is an
edit under a lock and a critical section, ``ShellOps.run`` a counted command).
Between turns the loop stops at a pause point (a pending pause takes effect
there, R3.4/R3.6) and saves a checkpoint when one was requested (R3.3).

The conversation is checkpointed after each model turn and after each tool
call, under the ``tool_loop`` key of the task's checkpoint.  A requeued or
resumed attempt loads it and continues: tool calls whose results were saved
are not run again; the model is not asked again for a turn it already gave.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from scheduler.core import Completion, ContentBlock, TextSink, VibeEngineError

#: What a tool returns: text, or content blocks (text and images) for its tool_result.
ToolOutput = str | list[dict[str, Any]]
ToolFn = Callable[[Mapping[str, Any]], Awaitable[ToolOutput]]
CHECKPOINT_KEY = "tool_loop"


class ToolError(VibeEngineError):
    """Raised by a tool for a failure the model should see (sent as ``is_error``)."""


@dataclass(frozen=True, slots=True)
class Tool:
    """A tool the model may call: its API definition and the coroutine that runs it."""

    name: str
    description: str
    input_schema: Mapping[str, Any]
    run: ToolFn

    def definition(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description,
                "input_schema": dict(self.input_schema)}


@dataclass(frozen=True, slots=True)
class ToolLoopResult:
    """How a loop ended: the final text, why, and what it took."""

    text: str
    stop_reason: str
    turns: int
    tool_calls: int
    messages: list[dict[str, Any]]
    resumed: bool = False


class _Host(Protocol):
    """What the loop needs of the agent context (``AgentContext`` provides it)."""

    @property
    def llm(self) -> Any: ...

    async def between_turns(self) -> None: ...

    async def checkpoint(self, state: Mapping[str, Any]) -> None: ...

    async def load_checkpoint(self) -> dict[str, Any] | None: ...

    def checkpoint_source(self, state: Callable[[], Mapping[str, Any]]) -> None: ...


@dataclass(slots=True)
class ToolLoop:
    """One agent's tool loop; ``notes`` is agent state saved with the conversation."""

    ctx: _Host
    tools: Sequence[Tool]
    system: str = ""
    max_turns: int = 30
    max_tokens: int = 4096
    model: str | None = None
    stream: bool = False
    on_text: TextSink | None = None
    options: Mapping[str, Any] | None = None
    hints: Mapping[str, Any] | None = None
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def notes(self) -> dict[str, Any]:
        """Agent state kept in the checkpoint with the conversation (JSON values)."""
        return self.state.setdefault("notes", {})  # type: ignore[no-any-return]

    async def start(self, messages: Sequence[Mapping[str, Any]]) -> bool:
        """Load a saved conversation, or begin with ``messages``; True when resumed."""
        saved = await self.ctx.load_checkpoint() or {}
        loop = saved.get(CHECKPOINT_KEY)
        resumed = isinstance(loop, dict) and bool(loop.get("messages"))
        if resumed:
            self.state = dict(loop)  # type: ignore[arg-type]
        else:
            self.state = {"messages": [dict(m) for m in messages], "turns": 0,
                          "tool_calls": 0, "results": [], "notes": {}}
        self.state["resumed"] = resumed
        self.ctx.checkpoint_source(lambda: {CHECKPOINT_KEY: self.state})
        return resumed

    async def run(self, messages: Sequence[Mapping[str, Any]]) -> ToolLoopResult:
        """Run to the model's end of turn (or ``max_turns``), resuming a saved loop."""
        if not self.state:
            await self.start(messages)
        msgs: list[dict[str, Any]] = self.state["messages"]
        if "stop_reason" in self.state:  # finished before: nothing left to do
            return self._result(_last_text(msgs), str(self.state["stop_reason"]))
        final: Completion | None = None
        while True:
            if self._unanswered(msgs):
                await self._run_calls(msgs)
            if self.state["turns"] >= self.max_turns:
                stop = "max_turns"
                break
            await self.ctx.between_turns()
            final = await self._turn(msgs)
            if final.stop_reason == "tool_use" and final.tool_uses:
                continue
            if final.stop_reason == "pause_turn":  # a server tool paused: send it back as is
                continue
            stop = final.stop_reason
            break
        self.state["stop_reason"] = stop
        await self._save()
        return self._result(final.text if final is not None else _last_text(msgs), stop)

    def _result(self, text: str, stop: str) -> ToolLoopResult:
        return ToolLoopResult(text, stop, self.state["turns"], self.state["tool_calls"],
                              self.state["messages"], bool(self.state.get("resumed")))

    async def _turn(self, msgs: list[dict[str, Any]]) -> Completion:
        reply: Completion = await self.ctx.llm.complete(
            list(msgs), system=self.system, tools=[t.definition() for t in self.tools],
            max_tokens=self.max_tokens, model=self.model, stream=self.stream,
            on_text=self.on_text, options=self.options, hints=self.hints,
        )
        msgs.append(reply.message())
        self.state["turns"] += 1
        await self._save()
        return reply

    def _unanswered(self, msgs: list[dict[str, Any]]) -> list[ContentBlock]:
        """The tool calls of a last assistant turn that have no results sent yet."""
        if not msgs or msgs[-1].get("role") != "assistant":
            return []
        content = msgs[-1].get("content")
        if not isinstance(content, list):
            return []
        return [b for b in content if isinstance(b, Mapping) and b.get("type") == "tool_use"]

    async def _run_calls(self, msgs: list[dict[str, Any]]) -> None:
        results: list[dict[str, Any]] = self.state["results"]
        done = {r["tool_use_id"] for r in results}
        for call in self._unanswered(msgs):
            if call["id"] in done:
                continue  # ran before a requeue or restart: its result was saved
            results.append(await self._call(call))
            self.state["tool_calls"] += 1
            await self._save()
        msgs.append({"role": "user", "content": list(results)})
        self.state["results"] = []
        await self._save()

    async def _call(self, call: ContentBlock) -> dict[str, Any]:
        tool = next((t for t in self.tools if t.name == call.get("name")), None)
        result: dict[str, Any] = {"type": "tool_result", "tool_use_id": call["id"]}
        if tool is None:
            return {**result, "content": f"unknown tool {call.get('name')!r}", "is_error": True}
        try:
            out = await tool.run(dict(call.get("input") or {}))
        except (ToolError, OSError, UnicodeDecodeError, TimeoutError, ValueError) as exc:
            return {**result, "content": f"{type(exc).__name__}: {exc}", "is_error": True}
        return {**result, "content": out}

    async def _save(self) -> None:
        await self.ctx.checkpoint({CHECKPOINT_KEY: self.state})


def _last_text(msgs: Sequence[Mapping[str, Any]]) -> str:
    for m in reversed(msgs):
        if m.get("role") == "assistant":
            content = m.get("content")
            if isinstance(content, str):
                return content
            return "".join(str(b.get("text", "")) for b in content or ()
                           if isinstance(b, Mapping) and b.get("type") == "text")
    return ""
