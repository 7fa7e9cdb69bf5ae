"""#23 metrics in Prometheus' conventions: the endpoint of a running orchestrator serves
exactly the documented metrics, with ``_total`` counters, ``_seconds`` histograms and a
``task`` label; a batch run leaves its final figures in a node_exporter textfile."""

from __future__ import annotations

import re
import urllib.request
from pathlib import Path
from typing import Any

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

from scheduler import ConfigError, TaskSpec, config_from_dict
from scheduler.runtime import Orchestrator
from scheduler.testing import run_virtual
from tests._observe_helpers import demo_orchestrator

DOC = Path(__file__).resolve().parent.parent / "docs" / "observability.md"
_ROW = re.compile(r"^\| `(vibe_\w+)` \| (counter|gauge|histogram) \|", re.M)
_TYPE = re.compile(r"^# TYPE (\S+) (\S+)$", re.M)


def documented_metrics() -> dict[str, str]:
    """name -> type from the table in docs/observability.md."""
    text = DOC.read_text(encoding="utf-8")
    return dict(_ROW.findall(text[text.index("## Prometheus metrics"):]))


def served_metrics(text: str) -> dict[str, str]:
    """name -> type from ``# TYPE`` lines of a scrape (the client's ``_created`` aside)."""
    return {name: kind for name, kind in _TYPE.findall(text)
            if not name.endswith("_created")}


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        return str(resp.read().decode())


def _value(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


class Scraper:
    """Scrapes the orchestrator's own endpoint once the other tasks ended."""

    orch: Orchestrator
    text: str = ""
    session: Any = None

    async def run(self, ctx: Any) -> None:
        # not ``depends_on``: the staged demo's tasks do not all complete
        for handle in list(self.orch.handles.values()):
            if handle.id != "scrape":
                await handle.done.wait()
        metrics = self.orch.observers.metrics
        assert metrics is not None and metrics.port is not None
        metrics.refresh()
        Scraper.text = await anyio.to_thread.run_sync(_scrape, metrics.port)
        Scraper.session = await self.orch.store.totals(f"session:{self.orch.session_id}")


@pytest.mark.real_asyncio
async def test_issue23_documented_metrics_equal_what_the_endpoint_serves(tmp_path: Path) -> None:
    """#23 (R2.1 figures, R5.4 leases, R3.4 pauses): scrape the real endpoint of a running
    orchestrator (the staged demo: an outage, a deferred and a paused task) and compare the
    names and types with docs/observability.md; the histograms and task labels are filled."""
    orch = demo_orchestrator(tmp_path, tasks=6, time_scale=0.002, staged=True,
                             metrics={"enabled": True, "port": 0})
    Scraper.orch, Scraper.text = orch, ""
    orch.agents["scraper"] = Scraper
    await orch.run([*orch.config.tasks, TaskSpec(id="scrape", agent="scraper")])
    text = Scraper.text
    documented = documented_metrics()
    assert len(documented) >= 20
    assert served_metrics(text) == documented
    # counters are counters, named *_total, including the lease grants (once gauges)
    assert all(n.endswith("_total") for n, k in documented.items() if k == "counter")
    session = Scraper.session
    assert _value(text, "vibe_lease_grants_total") >= session.calls
    calls = _value(text, "vibe_calls_total")
    assert _value(text, "vibe_call_duration_seconds_count") == calls  # failed calls too
    assert _value(text, "vibe_lease_wait_seconds_count") >= session.calls
    # the task label: one series per task, summing to the session's figures
    per_task = {t.id: _value(text, "vibe_task_tokens_total", task=t.id)
                for t in orch.config.tasks}
    assert sum(per_task.values()) == session.tokens
    assert sum(_value(text, "vibe_task_cost_usd_total", task=t)
               for t in per_task) == pytest.approx(session.cost_usd, abs=1e-9)
    fractions = {t: _value(text, "vibe_task_budget_fraction", task=t) for t in per_task}
    assert all(f >= 0 for f in fractions.values()) and max(fractions.values()) > 0
    # the staged demo's paused task was decided (its decision timeout): one pause observed
    assert _value(text, "vibe_paused_seconds_count") >= 1


def test_issue23_task_labels_can_be_turned_off(tmp_path: Path) -> None:
    """#23 cardinality: ``metrics.task_labels = false`` creates no per-task series."""
    orch = demo_orchestrator(tmp_path, tasks=3, time_scale=0.002,
                             metrics={"textfile": str(tmp_path / "m.prom"),
                                      "task_labels": False})
    run_virtual(orch.run)
    text = (tmp_path / "m.prom").read_text()
    assert "# TYPE vibe_task_tokens_total counter" in text
    assert 'vibe_task_tokens_total{task=' not in text
    assert 'vibe_task_budget_fraction{task=' not in text
    assert _value(text, "vibe_tokens_total") > 0


def test_issue23_batch_run_writes_the_textfile_at_run_end(tmp_path: Path) -> None:
    """#23: a batch run (no endpoint) leaves its final metrics for node_exporter's textfile
    collector: the file parses, equals the store's totals, and no temporary file is left."""
    out = tmp_path / "textfile" / "vibe.prom"
    orch = demo_orchestrator(tmp_path, tasks=4, time_scale=0.002,
                             metrics={"enabled": False, "textfile": str(out)})
    assert orch.observers.metrics is not None
    run_virtual(orch.run)
    assert orch.observers.metrics.port is None  # no port was opened
    text = out.read_text(encoding="utf-8")
    assert sorted(p.name for p in out.parent.iterdir()) == ["vibe.prom"]
    assert served_metrics(text) == documented_metrics()

    async def totals() -> Any:
        await orch.store.open()
        try:
            return await orch.store.totals(f"session:{orch.session_id}")
        finally:
            await orch.store.aclose()

    session = run_virtual(totals)
    assert _value(text, "vibe_tokens_total") == session.tokens
    assert _value(text, "vibe_calls_total", outcome="ok") == session.calls
    assert _value(text, "vibe_tasks", state="completed") == 4


def test_issue23_textfile_must_be_a_prom_file() -> None:
    """Bad input: a textfile the collector would ignore is refused, naming the field."""
    with pytest.raises(ConfigError, match="textfile"):
        config_from_dict({"metrics": {"textfile": "metrics.txt"}})
    assert config_from_dict({"metrics": {"textfile": "m.prom"}}).metrics.textfile == Path(
        "m.prom")
