"""Built-in agents used by ``vibe-engine demo`` and as plugin examples.

They do real governed work: model calls through ``ctx.llm``, file writes in
the task's workspace through ``ctx.files``, read-only shell commands through
``ctx.shell``, and a checkpoint after each step so a requeued or resumed
attempt continues where it stopped.
"""

from __future__ import annotations

from typing import Any

from scheduler import TaskSpec
from scheduler.runtime import AgentContext

#: A long, stable system prompt: counted once by the estimator, cached by the provider.
SYSTEM_PROMPT = (
    "You are a careful software engineer working inside a governed runtime. "
    "Keep changes small, explain trade-offs briefly, and stop when the task is done. "
) * 40


class QuestionAnswerAgent:
    """Answers a question with one model call."""

    async def run(self, ctx: AgentContext) -> str:
        reply = await ctx.llm.complete(
            [{"role": "user", "content": ctx.task.prompt}],
            system="Answer concisely.",
            max_tokens=int(ctx.task.params.get("max_tokens", 800)),
            hints={"difficulty": float(ctx.task.params.get("difficulty", 0.2))},
        )
        return reply.text


class CoderAgent:
    """Works in steps: ask the model, write a file, check the workspace; checkpoints each step."""

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


class RefactorAgent(CoderAgent):
    """A coder that can split a multi-file task into one task per file (R6.2)."""

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
