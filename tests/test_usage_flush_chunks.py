"""R2.6 with R7.1: a flush of many running tasks' usage.json files makes their texts a
bounded number at a time (one hop each), writes every due file, and skips a task that
ended before its hop (its end wrote its final file)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import pytest

from scheduler import TaskSpec, Usage, VibeConfig
from scheduler.budget import Tracker, _usage_files, resolve_task
from scheduler.core import SystemWallClock
from scheduler.store import MemoryStore


@pytest.mark.real_asyncio  # the files' worker-thread hops exist on asyncio only
async def test_r2_6_a_flush_writes_every_due_file_a_chunk_per_hop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_usage_files, "FLUSH_CHUNK", 4)
    texts: list[int] = []
    text = _usage_files.UsageFiles.text
    hops: list[int] = []

    def counted(files: _usage_files.UsageFiles, task_id: str, entry: Any) -> str:
        texts.append(len(hops))  # which hop's texts are being made
        return text(files, task_id, entry)

    monkeypatch.setattr(_usage_files.UsageFiles, "text", counted)
    config = VibeConfig.model_validate({"state_dir": tmp_path, "session_id": "s1"})
    tr = Tracker(MemoryStore(), config, session_id="s1", wall=SystemWallClock(),
                 state_dir=tmp_path, usage_json_interval_s=1e-9)
    await tr.open()
    ids = [f"t{i}" for i in range(10)]
    for tid in ids:
        await tr.start_task(tid, resolve_task(TaskSpec(id=tid, agent="a", prompt="x"), config))
        await tr.charge(tr.make_event(tid, model="sonnet", usage=Usage(10, 5)))
    await anyio.sleep(0.01)  # every file due at the next flush
    files = tr._files
    submit = files._batch.submit

    async def hop(batch: list[Any]) -> Any:
        hops.append(len(batch))
        if len(hops) == 1:
            tr._scopes.tasks["t9"].status = "completed"  # t9 ends meanwhile
        return await submit(batch)

    monkeypatch.setattr(files._batch, "submit", hop)
    assert await tr.flush_dirty_usage() == 9
    assert hops == [4, 4, 1]  # t9, ended before its hop, is left to its end's write
    assert texts == [0] * 4 + [1] * 4 + [2]  # each hop's texts made as it is asked for
    for tid in ids[:9]:
        doc = json.loads((tmp_path / "tasks" / tid / "usage.json").read_text())
        assert doc["usage"]["prompt_tokens"] == 10 and doc["status"] == "running"
    assert not (tmp_path / "tasks" / "t9" / "usage.json").exists()
