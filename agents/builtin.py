"""Built-in agents used by ``vibe-engine demo`` and as plugin examples.

* ``coder`` — a coding agent: the governed tool loop with tools to list,
  read, edit (exact string replacement) and write files and to run commands,
  in ``params.repo`` (an existing checkout) or the task's workspace; it stops
  when the model ends its turn and returns what it changed and ran.
* ``qa`` — one model call; the answer is the result.
* ``steps`` / ``refactor`` — scripted step work (a model call, a file write and
  a checkpoint per step) for the demo workload and the runtime's own tests.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
from pydantic import BaseModel, ConfigDict, Field

from agents._coding_tools import CodingTools
from scheduler import ConfigError, TaskSpec
from scheduler.runtime import AgentContext

#: A long, stable system prompt: counted once by the estimator, cached by the provider.
SYSTEM_PROMPT = (
    "You are a careful software engineer working inside a governed runtime. "
    "Keep changes small, explain trade-offs briefly, and stop when the task is done. "
) * 40


#: Counts beyond this are no count a task means (and lose precision as floats).
_MOST = 2**53


class QuestionAnswerParams(BaseModel):
    """The ``params`` the built-in agents read, checked when the config is loaded (a
    ``steps = "x"`` or ``nan`` crashed the agent with a traceback at run time); other keys
    are the runtime's or the router's (``max_output_tokens``, ``parts`` …) and pass."""

    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)

    # checked only: each agent reads its params itself, with its own defaults

    max_tokens: int = Field(default=800, gt=0, le=_MOST)
    difficulty: float = Field(default=0.2, ge=0, le=1)


class StepsParams(QuestionAnswerParams):
    steps: int = Field(default=3, ge=0, le=_MOST)


class RefactorParams(StepsParams):
    files: list[str] = Field(default_factory=list)


class CoderParams(StepsParams):
    repo: str | None = None
    max_turns: int = Field(default=30, gt=0, le=_MOST)
    model: str | None = None
    stream: bool = False


class QuestionAnswerAgent:
    """Answers a question with one model call."""

    params_model = QuestionAnswerParams

    async def run(self, ctx: AgentContext) -> str:
        reply = await ctx.llm.complete(
            [{"role": "user", "content": ctx.task.prompt}],
            system="Answer concisely.",
            max_tokens=int(ctx.task.params.get("max_tokens", 800)),
            hints={"difficulty": float(ctx.task.params.get("difficulty", 0.2))},
        )
        return reply.text


CODER_SYSTEM = (
    "You are a coding agent working in a repository through tools: list_files, read_file, "
    "edit_file (exact string replacement), write_file and run_command. Read before you "
    "edit, keep changes small, run the tests to check your work, and end your turn with a "
    "short summary once the task is done.\n\n" + SYSTEM_PROMPT
)


class CoderAgent:
    """A coding agent: model → tools → model in a repository until the model ends its turn.

    ``params``: ``repo`` (the directory to work in; default the task's workspace),
    ``max_turns`` (30), ``max_tokens`` per turn (4096), ``model`` (a tier; routed when
    absent), ``stream`` (false).  The result is a JSON-serialisable summary.
    """

    params_model = CoderParams

    async def run(self, ctx: AgentContext) -> dict[str, Any]:
        p = ctx.task.params
        root = ctx.workspace
        if p.get("repo"):
            root = Path(await (await anyio.Path(str(p["repo"])).expanduser()).resolve())
        if p.get("repo") and not await anyio.Path(root).is_dir():
            raise ConfigError(f"tasks.{ctx.task.id}.params.repo", str(p["repo"]),
                              "not a directory")
        loop = ctx.tool_loop(
            [], system=CODER_SYSTEM, max_turns=3 if ctx.simplify else int(p.get("max_turns", 30)),
            max_tokens=int(p.get("max_tokens", 4096)), model=p.get("model"),
            stream=bool(p.get("stream", False)),
            hints={"difficulty": float(p.get("difficulty", 0.4)),
                   "tool_turns": int(p.get("steps", 2))},
        )
        loop.tools = CodingTools(ctx, root, lambda: loop.notes).tools()
        result = await loop.run([{"role": "user", "content": ctx.task.prompt}])
        return {
            "repo": str(root),
            "files_changed": list(loop.notes.get("files_changed", [])),
            "commands": list(loop.notes.get("commands", [])),
            "final_text": result.text,
            "stop_reason": result.stop_reason,
            "turns": result.turns,
            "tool_calls": result.tool_calls,
            "resumed": result.resumed,
        }


class StepsAgent:
    """Works in steps: ask the model, write a file, check the workspace; checkpoints each step."""

    params_model = StepsParams

    async def run(self, ctx: AgentContext) -> dict[str, Any]:
        steps = int(ctx.task.params.get("steps", 3))
        difficulty = float(ctx.task.params.get("difficulty", 0.4))
        state = await ctx.load_checkpoint() or {"step": 0, "files": []}
        ctx.checkpoint_source(lambda: state)  # what a forced checkpoint saves (R3.3)
        messages: list[dict[str, Any]] = [{"role": "user", "content": ctx.task.prompt}]
        while state["step"] < steps:
            if ctx.simplify and state["step"] >= 1:
                break
            reply = await ctx.llm.complete(
                messages, system=SYSTEM_PROMPT,
                max_tokens=int(ctx.task.params.get("max_tokens", 2000)),
                hints={"difficulty": difficulty},
            )
            messages += [
                {"role": "assistant", "content": reply.text},
                {"role": "user", "content": f"Continue with step {state['step'] + 2}."},
            ]
            name = f"step_{state['step'] + 1}.py"
            await ctx.files.write(name, f"# {ctx.task.prompt}\n# {reply.text}\n")
            state["files"].append(name)
            state["step"] += 1
            await ctx.checkpoint(state)
        await ctx.shell.run("ls")
        return state


class RefactorAgent(StepsAgent):
    """A coder that can split a multi-file task into one task per file (R6.2)."""

    params_model = RefactorParams

    def decompose(self, task: TaskSpec) -> list[TaskSpec]:
        files = [str(f) for f in task.params.get("files", [])] or ["part1", "part2"]
        return [
            task.model_copy(
                update={
                    "id": f"{task.id}.{i + 1}",
                    "prompt": f"{task.prompt} — only {name}",
                    "params": {**task.params, "files": [name], "steps": 1},
                }
            )
            for i, name in enumerate(files)
        ]
