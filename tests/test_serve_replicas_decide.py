"""R3.4 across ``serve`` replicas: a person's decision acts once for the fleet.

Two ``vibe-engine serve`` processes share one store (a SQLite file, or a Redis
namespace) and serve the same ``hold`` key, each with its own state directory (its own
control socket).  ``vibe-engine decide KEY add`` sent to one of them must raise the
key's budget on every replica, once: the other replica's held request completes, its
next request is admitted, a replica started after the decision starts from the raised
budget, and the budget is raised by the amount added -- not once per replica.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import AsyncExitStack, ExitStack, contextmanager
from pathlib import Path

import anthropic
import anyio
import pytest

from agents.fake_api import FakeAnthropicServer
from scheduler.store import open_store
from tests._anthropic_helpers import SECRET_KEY, fake_api
from tests._redis_helpers import REDIS_URL
from tests._serve_helpers import BIN, CLIENT_KEYS, serve_process

__all__ = ["fake_api"]  # the fixture, imported for pytest

ENV = {"UPSTREAM_KEY": SECRET_KEY, **CLIENT_KEYS}
BUDGET = 600
ADDED = 5000
#: Long enough that a held request is answered by the decision, not by the timeout.
MAX_HOLD_S = 90


def _config(tmp_path: Path, name: str, upstream: str, store: str) -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(f"""
state_dir = "{tmp_path / name}"
store = "{store}"

[serve]
upstream_base_url = "{upstream}"
upstream_key_env = "UPSTREAM_KEY"
max_hold_s = {MAX_HOLD_S}

[[serve.keys]]
name = "alpha"
key_env = "VIBE_KEY_A"
on_limit = "hold"
budget = {{ tokens = {BUDGET} }}
""")
    return path


@contextmanager
def _replica(tmp_path: Path, name: str, upstream: str, store: str) -> Iterator[str]:
    with serve_process(_config(tmp_path, name, upstream, store), tmp_path, ENV) as url:
        yield url


async def _ask(client: anthropic.AsyncAnthropic, max_tokens: int) -> str:
    """One call: "ok", or the start of the refusal's message."""
    try:
        await client.messages.create(
            model="claude-haiku-4-5", max_tokens=max_tokens,
            messages=[{"role": "user", "content": "Name one prime."}])
    except anthropic.BadRequestError as exc:
        return f"refused: {exc}"
    return "ok"


async def _cli(*args: str) -> str:
    done = await anyio.run_process([str(BIN), *args], check=False)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode()


async def _both_paused(store: str, tmp_path: Path) -> None:
    """Wait until both replicas paused the key: two pause records in the shared store
    (read there: a ``status`` command per poll is slow on a loaded host)."""
    backend = open_store(store, tmp_path)
    await backend.open()
    try:
        with anyio.fail_after(60):
            while len(await backend.list_state("pause")) < 2:  # noqa: ASYNC110 - polled
                await anyio.sleep(0.1)
    finally:
        await backend.aclose()


async def _limit(state_dir: Path) -> int:
    """The key's token limit as the replica's ``usage.json`` shows it (0: not written)."""
    path = state_dir / "tasks" / "alpha" / "usage.json"
    with anyio.move_on_after(5):  # written within a second of a charge
        while not path.exists():  # noqa: ASYNC110 - a file, not signalled
            await anyio.sleep(0.1)
    if not path.exists():
        return 0
    return int(json.loads(path.read_text())["budget"]["tokens"])


async def _fleet(tmp_path: Path, upstream: str, store: str,
                 action: tuple[str, ...] = ("add", "--tokens", str(ADDED))) -> dict[str, object]:
    """Both replicas held at the key's limit, ``decide alpha ACTION`` sent to replica a;
    what each replica then answers, and (after an add) the limit each shows."""
    seen: dict[str, object] = {}
    with ExitStack() as procs:
        urls = [procs.enter_context(_replica(tmp_path, n, upstream, store)) for n in "ab"]
        async with AsyncExitStack() as stack:
            a, b = [await stack.enter_async_context(anthropic.AsyncAnthropic(
                base_url=u, api_key=CLIENT_KEYS["VIBE_KEY_A"], max_retries=0,
                timeout=60)) for u in urls]
            assert await _ask(a, 64) == "ok"
            answers: dict[str, str] = {}

            async def held(name: str, client: anthropic.AsyncAnthropic) -> None:
                answers[name] = await _ask(client, 1000)  # over the 600 tokens: held

            async with anyio.create_task_group() as tg:
                tg.start_soon(held, "a", a)
                tg.start_soon(held, "b", b)
                await _both_paused(store, tmp_path)
                await _cli("decide", "alpha", *action, "-c", str(tmp_path / "a.toml"))
            seen["held"] = answers
            if action[0] != "add":
                return seen
            seen["next_b"] = await _ask(b, 1000)
            with anyio.move_on_after(5):  # the files are rewritten every second
                while BUDGET in (await _limit(tmp_path / "a"),  # noqa: ASYNC110
                                 await _limit(tmp_path / "b")):
                    await anyio.sleep(0.1)
            seen["limits"] = (await _limit(tmp_path / "a"), await _limit(tmp_path / "b"))
    # a replica started after the decision (a restart: a new session on the store)
    with _replica(tmp_path, "c", upstream, store) as url_c:
        async with anthropic.AsyncAnthropic(base_url=url_c, api_key=CLIENT_KEYS["VIBE_KEY_A"],
                                            max_retries=0, timeout=60) as c:
            seen["restarted"] = await _ask(c, 1000)
            seen["limit_c"] = await _limit(tmp_path / "c")
    return seen


def _check(seen: dict[str, object]) -> None:
    assert seen["held"] == {"a": "ok", "b": "ok"}, seen
    assert seen["next_b"] == "ok", seen
    assert seen["limits"] == (BUDGET + ADDED, BUDGET + ADDED), seen
    assert seen["restarted"] == "ok", seen
    assert seen["limit_c"] == BUDGET + ADDED, seen


@pytest.mark.slow
@pytest.mark.timeout(400)  # a held request without the fix waits MAX_HOLD_S, twice
@pytest.mark.real_asyncio  # server processes, the store and the fake API over sockets
async def test_r3_4_add_on_one_sqlite_replica_raises_the_budget_of_every_replica_once(
    fake_api: FakeAnthropicServer, tmp_path: Path
) -> None:
    """R3.4, R1.2: ``decide alpha add`` sent to replica a of two on one SQLite file lets
    replica b's held request through, b admits its next request, both show the budget
    raised once, and a replica started afterwards starts from it."""
    _check(await _fleet(tmp_path, fake_api.base_url, f"sqlite:///{tmp_path / 'shared.db'}"))


@pytest.mark.slow
@pytest.mark.timeout(400)  # a held request without the fix waits MAX_HOLD_S, twice
@pytest.mark.real_asyncio  # server processes, Redis and the fake API over sockets
async def test_r3_4_add_on_one_redis_replica_raises_the_budget_of_every_replica_once(
    fake_api: FakeAnthropicServer, tmp_path: Path, redis_ns: str
) -> None:
    """R3.4, R1.2: as on SQLite, with the replicas on one Redis namespace."""
    _check(await _fleet(tmp_path, fake_api.base_url, f"{REDIS_URL}?namespace={redis_ns}"))


@pytest.mark.slow
@pytest.mark.timeout(400)  # a held request without the fix waits MAX_HOLD_S, twice
@pytest.mark.real_asyncio  # server processes, the store and the fake API over sockets
async def test_r3_4_finish_on_one_replica_answers_the_requests_held_on_every_replica(
    fake_api: FakeAnthropicServer, tmp_path: Path
) -> None:
    """R3.4: ``decide alpha finish`` sent to replica a answers the request held on
    replica b too (refused as finished), not only after b's ``max_hold_s``."""
    seen = await _fleet(tmp_path, fake_api.base_url, f"sqlite:///{tmp_path / 'shared.db'}",
                        ("finish",))
    held = seen["held"]
    assert isinstance(held, dict)
    for name in "ab":
        assert "the decision was finish" in held[name], seen
    assert fake_api.requests == 1  # the first call only
