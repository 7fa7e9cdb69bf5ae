"""#21, R7.2: a key may have at most ``serve.max_tasks_per_key`` grouped tasks
(``x-vibe-task``) at a time.  A client naming a new task per request would otherwise grow
the server's memory and store without bound; a call naming one more is refused with the
API's error shape (429 ``rate_limit_error``, not retried), the key's running tasks are
served as before and nothing already charged is lost."""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anthropic
import anyio
import pytest

from agents.fake_api import FakeAnthropicServer
from scheduler.config import config_from_dict
from scheduler.core import ConfigError, Usage
from scheduler.serve import Served
from scheduler.serve._runtime import GroupLimitError
from scheduler.testing import InstantProvider
from tests._anthropic_helpers import fake_api
from tests._serve_helpers import CLIENT_KEYS, GROUPED_USER, grouped_call, serve_config, serving

__all__ = ["fake_api"]  # the fixture, imported for pytest

IDLE_S = 60.0


def _provider() -> Any:
    """Answers 150 tokens at once, in the place of serve's upstream client (the gateway
    needs only ``complete``)."""
    return InstantProvider(Usage(100, 50))


def _served(tmp_path: Path, cap: int) -> Served:
    data = {
        "state_dir": str(tmp_path / "state"), "session_id": "serve-cap",
        "serve": {"upstream_base_url": "http://127.0.0.1:9", "upstream_key_env": "UP",
                  "group_idle_s": IDLE_S, "max_tasks_per_key": cap,
                  "keys": [{"name": "alpha", "key_env": "KEY_A"},
                           {"name": "beta", "key_env": "KEY_B"}]},
    }
    return Served(config_from_dict(data), env={"KEY_A": "sk-a", "KEY_B": "sk-b"},
                  provider=_provider())


async def test_r7_2_new_grouped_tasks_beyond_the_cap_are_refused_until_one_idles_out(
    tmp_path: Path,
) -> None:
    """Virtual time: with a cap of 3, 500 new names are refused without growing the run;
    the running tasks and the other key are served; once they idle out new names start."""
    served = _served(tmp_path, cap=3)
    async with served.running():
        orch = served.orchestrator
        for name in ("a", "b", "c"):
            await grouped_call(served, "alpha", name)
        for i in range(500):
            with pytest.raises(GroupLimitError, match=r"serve\.max_tasks_per_key"):
                await grouped_call(served, "alpha", f"flood-{i}")
        assert sorted(orch.handles) == ["alpha", "alpha/a", "alpha/b", "alpha/c", "beta"]
        for name in ("a", "b", "c"):  # the running ones are served as before
            await grouped_call(served, "alpha", name)
        await grouped_call(served, "beta", "x")  # a cap per key: beta has its own
        assert orch.tracker.task_scope("alpha").totals.calls == 6  # nothing lost
        await anyio.sleep(IDLE_S * 2)
        for name in ("d", "e", "f"):  # freed once the others idled out
            await grouped_call(served, "alpha", name)
        with pytest.raises(GroupLimitError):
            await grouped_call(served, "alpha", "g")
        assert orch.tracker.task_scope("alpha").totals.calls == 9


@pytest.mark.real_asyncio  # real sockets: uvicorn, the SDK, the fake API
async def test_r7_2_over_http_the_cap_is_a_429_not_retried_and_charges_nothing(
    fake_api: FakeAnthropicServer, tmp_path: Path,
) -> None:
    keys = [{"name": "alpha", "key_env": "VIBE_KEY_A"}]
    config = serve_config(tmp_path, fake_api.base_url, keys, max_tasks_per_key=2)
    async with (serving(config) as run, AsyncExitStack() as stack):
        aio = await stack.enter_async_context(anthropic.AsyncAnthropic(
            base_url=run.url, api_key=CLIENT_KEYS["VIBE_KEY_A"]))  # the SDK's retries on

        async def ask(name: str) -> None:
            await aio.messages.create(model="claude-haiku-4-5", max_tokens=16,
                                      messages=GROUPED_USER, extra_headers={"x-vibe-task": name})

        await ask("one")
        await ask("two")
        with pytest.raises(anthropic.RateLimitError) as info:
            await ask("three")
        assert info.value.status_code == 429
        assert info.value.response.headers["x-should-retry"] == "false"
        assert "max_tasks_per_key" in str(info.value.message)
        await ask("one")
        await aio.messages.create(model="claude-haiku-4-5", max_tokens=16, messages=GROUPED_USER)
        totals = await run.settled("alpha", 4)
        assert fake_api.requests == 4 and totals.calls == 4


@pytest.mark.parametrize("value", [0, -1, "many"])
def test_r7_2_a_bad_max_tasks_per_key_names_the_field(tmp_path: Path, value: Any) -> None:
    with pytest.raises((ConfigError, ValueError), match="max_tasks_per_key"):
        config_from_dict(serve_config(tmp_path, "http://127.0.0.1:9",
                                      [{"name": "a", "key_env": "K"}],
                                      max_tasks_per_key=value))


async def test_r7_2_the_cap_is_per_replica_and_the_refusal_says_so(tmp_path: Path) -> None:
    """Replicas on one store (virtual time): the cap bounds each server's memory, so each
    of two replicas with a cap of 1 runs one task of the key (2 in all, as documented:
    N replicas, N times it); the 429's message says the count is this server's."""
    replicas = []
    for name in ("r1", "r2"):
        served = _served(tmp_path / name, cap=1)
        replicas.append(Served(served.config.model_copy(update={
            "store": f"sqlite://{tmp_path / 'shared.db'}"}), env={
            "KEY_A": "sk-a", "KEY_B": "sk-b"}, provider=_provider()))
    async with replicas[0].running(), replicas[1].running():
        await grouped_call(replicas[0], "alpha", "one")
        await grouped_call(replicas[1], "alpha", "two")
        for served in replicas:
            with pytest.raises(GroupLimitError, match="1 grouped tasks on this server"):
                await grouped_call(served, "alpha", "three")
