"""The allocator's share settings say what they do (R5.3)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from scheduler import ConfigError, VibeConfig
from scheduler.config import config_from_dict

BIN = Path(sys.executable).parent / "vibe-engine"


def test_r5_3_background_min_share_is_the_background_floor() -> None:
    """R5.3: the setting that sets the background class's floor is named for it."""
    cfg = VibeConfig.model_validate({"allocator": {"background_min_share": 0.2}})
    assert cfg.allocator.background_min_share == 0.2
    assert cfg.allocator.min_share == 0.2  # what the allocator core reads


def test_r5_3_old_min_share_name_is_refused_with_the_new_name() -> None:
    """R5.3: ``min_share`` never set an agent's guarantee; the old name is refused with a
    message naming ``background_min_share``."""
    with pytest.raises(ConfigError) as err:
        config_from_dict({"allocator": {"min_share": 0.3}})
    assert "background_min_share" in str(err.value) and "allocator" in str(err.value)


def test_r5_3_old_name_through_vibe_engine_run(tmp_path: Path) -> None:
    """Bad input: one clear line naming the field, exit 2, nothing written."""
    cfg = tmp_path / "old.toml"
    cfg.write_text('state_dir = "st"\n[allocator]\nmin_share = 0.3\n')
    out = subprocess.run([str(BIN), "run", str(cfg), "--no-live"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "COLUMNS": "200"})
    assert out.returncode == 2
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, out.stderr
    assert "allocator" in lines[0] and "background_min_share" in lines[0]
    assert not (tmp_path / "st").exists()
