"""Any named model: the catalog is named models laid over the defaults (R6.1, R2.4)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from scheduler import ConfigError, VibeConfig
from scheduler.config import config_from_dict, load_config
from scheduler.core import Usage, cost_usd
from scheduler.routing import ModelCatalog
from scheduler.runtime import AgentContext
from tests._helpers import OrchestratorFactory

BIN = Path(sys.executable).parent / "vibe-engine"


def test_defaults_are_current_claude_models_with_published_prices() -> None:
    models = VibeConfig().models
    assert models["haiku"].model_id == "claude-haiku-4-5"
    assert (models["sonnet"].input_usd_per_mtok, models["sonnet"].output_usd_per_mtok) == (3, 15)
    assert (models["opus-4-1"].input_usd_per_mtok, models["opus-4-1"].output_usd_per_mtok) == (
        15, 75)
    assert ModelCatalog(VibeConfig()).tiers == ("haiku", "sonnet", "opus")


def test_renaming_a_tiers_model_id_keeps_everything_else(tmp_path: Path) -> None:
    """One field in TOML changes one field: prices, rank and the other models stay."""
    cfg = tmp_path / "v.toml"
    cfg.write_text('[models.sonnet]\nmodel_id = "claude-sonnet-4-5"\n')
    config = load_config(cfg)
    assert config.models["sonnet"].model_id == "claude-sonnet-4-5"
    assert config.models["sonnet"].input_usd_per_mtok == 3.0
    assert config.models["sonnet"].rank == 2
    assert set(VibeConfig().models) <= set(config.models)
    # and the request carries the new id
    assert config.model_spec("sonnet").model_id == "claude-sonnet-4-5"


def test_adding_a_model_with_prices_and_rank_joins_the_tiers() -> None:
    config = config_from_dict({"models": {"sonnet-fast": {
        "model_id": "claude-sonnet-4-6-fast", "input_usd_per_mtok": 6.0,
        "output_usd_per_mtok": 30.0, "cache_read_multiplier": 0.2, "rank": 2.5}}})
    catalog = ModelCatalog(config)
    assert catalog.tiers == ("haiku", "sonnet", "sonnet-fast", "opus")
    assert catalog.up("sonnet") == "sonnet-fast" and catalog.up("sonnet-fast") == "opus"
    spec = config.model_spec("sonnet-fast")
    assert cost_usd(Usage(1_000_000, 0, 1_000_000), spec) == pytest.approx(6.0 + 1.2)
    # a model without a rank is used only by name
    unranked = ModelCatalog(config_from_dict({"models": {"x": {
        "model_id": "claude-x", "input_usd_per_mtok": 1, "output_usd_per_mtok": 1}}}))
    assert "x" not in unranked.tiers and unranked.substitutes("x") == []
    assert unranked.entry("x").model_id == "claude-x"


def test_a_new_model_without_prices_names_the_field() -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict({"models": {"mine": {"model_id": "claude-mine"}}})
    assert info.value.field == "models.mine.input_usd_per_mtok"


def test_bad_model_config_from_the_cli_is_one_line_and_exit_2(tmp_path: Path) -> None:
    cfg = tmp_path / "v.toml"
    cfg.write_text('[models.sonnet]\nrank = "high"\n')
    out = subprocess.run([str(BIN), "run", str(cfg)], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2 and "models.sonnet.rank" in out.stderr
    assert not (tmp_path / ".vibe-engine").exists()


@pytest.mark.anyio
async def test_unknown_model_name_in_a_request_fails_the_task_naming_it(
    make_orchestrator: OrchestratorFactory,
) -> None:
    """An agent naming a model the catalog lacks: ConfigError listing the known ones; the
    task fails with that reason and nothing is charged."""

    class Agent:
        async def run(self, ctx: AgentContext) -> Any:
            return await ctx.llm.complete([{"role": "user", "content": "hi"}], model="gpt-9")

    orch = make_orchestrator({"a": Agent}, tasks=[{"id": "t", "agent": "a", "prompt": "x"}])
    report = await orch.run()
    out = report.outcomes["t"]
    assert out.status == "failed" and "gpt-9" in out.reason and "sonnet" in out.reason
    assert out.usage.calls == 0


@pytest.mark.anyio
async def test_a_model_named_by_an_agent_is_charged_at_its_own_prices(
    make_orchestrator: OrchestratorFactory,
) -> None:
    class Agent:
        async def run(self, ctx: AgentContext) -> Any:
            return (await ctx.llm.complete([{"role": "user", "content": "hi"}],
                                           model="opus-4-1")).model

    orch = make_orchestrator({"a": Agent}, tasks=[{"id": "t", "agent": "a", "prompt": "x"}])
    report = await orch.run()
    out = report.outcomes["t"]
    assert out.status == "completed", out.reason
    # ScriptedProvider: 100 in, 50 out at $15 / $75 per million
    assert out.usage.cost_usd == pytest.approx((100 * 15 + 50 * 75) / 1e6)
