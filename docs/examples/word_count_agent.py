"""An example agent plugin: summarise a text file and count its words.

Used by docs/guide-agent-plugin.md and run by the test suite
(tests/test_docs_examples.py).  Register it in your own package's
``pyproject.toml``::

    [project.entry-points."vibe_engine.agents"]
    wordcount = "word_count_agent:WordCountAgent"
"""

from __future__ import annotations

from typing import Any

from agents import AgentContext


class WordCountAgent:
    """Writes the task's text to a file, counts its words, and asks a model for a summary.

    Everything goes through ``ctx``: the file write counts as one file edit,
    ``wc -w`` as one (safe) shell command, and the model call is routed,
    estimated, admitted against the budgets, and charged.
    """

    async def run(self, ctx: AgentContext) -> dict[str, Any]:
        state = await ctx.load_checkpoint() or {"written": False}
        text = str(ctx.task.params.get("text", ctx.task.prompt))
        if not state["written"]:
            await ctx.files.write("input.txt", text)
            state["written"] = True
            await ctx.checkpoint(state)  # a requeued attempt skips the write
        count = await ctx.shell.run("wc -w input.txt")
        words = int(count.stdout.split()[0])
        reply = await ctx.llm.complete(
            [{"role": "user", "content": f"Summarise in one line:\n\n{text}"}],
            system="You write one-line summaries.",
            max_tokens=int(ctx.task.params.get("max_tokens", 200)),
        )
        ctx.log.info("word_count_done", words=words, model=reply.model)
        return {"words": words, "summary": reply.text, "model": reply.model}
