"""The distributed store: several orchestrator processes share one Redis.

``RedisStore`` implements :class:`~scheduler.store.Store` plus the two shared
extensions of :mod:`scheduler.store._ledger`: atomic budget holds
(:class:`BudgetLedger`) and fair slices of global pools (:class:`SliceBackend`).
Every mutation is one Lua script (see :mod:`._redis_lua`), loaded once and
called by SHA.

**asyncio only.** It is built on ``redis.asyncio`` (through
:class:`~._redis_conn.RedisConnection`) and therefore runs on anyio's asyncio
backend only (the production backend); the ``_redis*`` modules are the only ones
of ``scheduler/`` allowed to depend on an asyncio-specific library.  Code using
it stays backend-neutral.

Keys (all with the hash tag ``{namespace}`` so a Cluster keeps them together)::

    vibe:{ns}:events            hash   event_id -> event JSON (HSETNX: idempotent)
    vibe:{ns}:ev:seq            string insertion counter
    vibe:{ns}:ev:all|task:<id>|day:<d>   zsets of event ids by insertion order
    vibe:{ns}:tot:<scope>       hash   running totals, ``tokens``, ``m:<model>``, and
                                       ``version`` (bumped by every event applied)
    vibe:{ns}:holds:<scope>     zset   hold id -> expiry (ms)
    vibe:{ns}:amts:<scope>      hash   hold amounts and their sums (``__sum`` …)
    vibe:{ns}:state:<kind>      hash   key -> JSON
    vibe:{ns}:pool:<name>:grant|demand|exp|meta   slice leases of a global pool

Connection loss: a usage event that cannot reach Redis is appended to a local
fsync-ed :class:`~._spool.Spool` and replayed (idempotently) as soon as Redis
answers again (at the latest at the next start), so no usage is lost.  New holds
are refused while Redis is down (``failure_mode="closed"``, the default) or
granted from a small local allowance (``"open"``).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, cast

import anyio

from scheduler.config import DistributedConfig
from scheduler.core import (
    BudgetExceededError,
    StoreUnavailableError,
    Totals,
    UsageEvent,
    get_logger,
)
from scheduler.store._base import ESTIMATED_CHARGE, OPEN_CALL, RECORDED, check_event, scopes_of
from scheduler.store._ledger import Hold, Recorded, ScopeLimit, Settled, SliceGrant
from scheduler.store._redis_conn import DOWN, RedisConnection, replay_lock, spool_read_lock
from scheduler.store._redis_conn import RedisStoreStatistics as RedisStoreStatistics
from scheduler.store._redis_conn import split_namespace as split_namespace
from scheduler.store._redis_holds import holder, prune_dead_holds
from scheduler.store._redis_lua import limit_arg, record_args, recorded_reply, settled_reply
from scheduler.store._redis_lua import totals_from_hash as totals_from_hash
from scheduler.store._redis_reads import (
    FailOpenAllowance,
    add_spooled,
    closed_with,
    read_events,
    spooled_state,
    with_spooled,
    with_spooled_events,
)
from scheduler.store._redis_slices import RedisSlices
from scheduler.store._spool import Spool, SpooledEvent, SpooledState

_log = get_logger("vibe_engine.store.redis")


class RedisStore:
    """:class:`~scheduler.store.Store`, :class:`BudgetLedger` and :class:`SliceBackend` on Redis.

    ``url`` is ``redis://host:port/db`` (optionally ``?namespace=name``); ``namespace``
    overrides it, else ``config.namespace``.  ``now_ms``: the scripts' clock (virtual-time
    tests).  ``replay=False``: never replay the spool, only count it in totals (a reader).
    """

    def __init__(
        self,
        url: str,
        *,
        namespace: str | None = None,
        config: DistributedConfig | None = None,
        spool_path: str | Path | None = None,
        now_ms: Callable[[], int] | None = None,
        replay: bool = True,
    ) -> None:
        self.url, url_ns = split_namespace(url)
        self.config = config or DistributedConfig()
        self.namespace = namespace or url_ns or self.config.namespace
        self.prefix = f"vibe:{{{self.namespace}}}:"
        path = spool_path or self.config.spool_path or Path(".vibe-engine/redis-spool.jsonl")
        self.spool = Spool(Path(path))
        self._now_ms = now_ms
        self._link = RedisConnection(
            self.url, namespace=self.namespace, socket_timeout_s=self.config.socket_timeout_s,
            failure_mode=self.config.failure_mode, max_connections=self.config.max_connections,
        )
        self._slices = RedisSlices(self._link, self.key, self._now_arg, self._mark_up)
        self._replayed = 0
        self._draining = anyio.Lock()
        #: False for a reader (``status``) beside the orchestrator that owns the spool.
        self._replays = replay
        self._allowance = FailOpenAllowance(self.config, self.namespace)
        #: Usage events this process spooled so far: a read of the totals made while one
        #: was spooled does not hold it (see :meth:`try_reserve`).
        self._spooled = 0

    # -- connection ----------------------------------------------------------------

    async def open(self) -> None:
        """Connect, load the scripts and replay any spooled usage (raises if unreachable)."""
        await self._link.open()
        await self._drain()

    async def aclose(self) -> None:
        if self._replays:  # a reader leaves the spool to its owner
            self.spool.warn_left("redis_spool_pending", namespace=self.namespace)
        await self._link.aclose()

    def _mark_up(self) -> None:
        if self._link.mark_up():
            self._allowance.reset()  # the outage allowance starts over

    def _now_arg(self) -> str:
        return str(self._now_ms()) if self._now_ms is not None else ""

    def statistics(self) -> RedisStoreStatistics:
        return RedisStoreStatistics(
            self.namespace, self._link.up, self.config.failure_mode, len(self.spool),
            self._replayed, self._allowance.tokens, self._allowance.cost_usd)

    # -- keys ----------------------------------------------------------------------

    def key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    def _hold_keys(self, scopes: Sequence[str]) -> list[str]:
        out: list[str] = []
        for s in scopes:
            out += [self.key("holds", s), self.key("amts", s)]
        return out

    def _record_keys(self, event: UsageEvent, hold_scopes: Sequence[str]) -> list[str]:
        return [
            self.key("events"), self.key("ev", "all"), self.key("ev", "seq"),
            self.key("ev", "task", event.task_id), self.key("ev", "day", event.day),
            *(self.key("tot", s) for s in scopes_of(event)),
            *self._hold_keys(hold_scopes),
        ]

    # -- usage ---------------------------------------------------------------------

    async def _record_now(self, event: UsageEvent, hold_id: str, scopes: Sequence[str],
                          close: str | None = None) -> Recorded | Settled:
        """Run ``record``, or ``settle_open`` closing the open call ``close`` with it."""
        args, keys = record_args(event, hold_id), self._record_keys(event, scopes)
        if close is not None:
            keys += [self.key("state", OPEN_CALL), self.key("state", ESTIMATED_CHARGE)]
            args = (*args, close, self.prefix)
        reply = await self._link.script("record" if close is None else "settle_open", keys, args)
        return settled_reply(reply, scopes_of(event), scopes)  # a hold's: with its totals

    async def _drain(self) -> None:
        """Replay spooled writes in order until the spool is empty or Redis fails.

        Single-flight, here and across processes (:func:`replay_lock`): two replays would
        each drop the entries they read, so the second would drop writes spooled meanwhile
        (and replay state writes twice).  A waiter skips Redis if it just failed."""
        if not len(self.spool) or not self._replays:
            return
        waited = self._draining.locked()
        async with self._draining:
            if len(self.spool) and not (waited and self._link.backing_off()):
                async with replay_lock(self.spool.path) as mine:
                    if mine:
                        await self._replay()

    async def _replay(self) -> None:
        entries = self.spool.read()
        done = 0
        try:
            for i, entry in enumerate(entries):
                if isinstance(entry, SpooledEvent):
                    ev, hold_id = entry.event, entry.hold_id
                    await self._record_now(ev, hold_id, scopes_of(ev) if hold_id else (),
                                           closed_with(ev, entries[i + 1:i + 2]))
                else:
                    await self._write_state_now(entry.kind, entry.key, entry.value)
                done += 1
        except DOWN as exc:
            self._link.mark_down(exc)
        finally:
            if done and self.spool.drop_replayed(done):  # those read; later ones stay
                self._replayed += done
                _log.info("redis_spool_replayed", namespace=self.namespace, writes=done,
                          pending=len(self.spool))
        if done == len(entries):
            self._mark_up()

    async def _record_or_spool(self, event: UsageEvent, hold_id: str, scopes: Sequence[str],
                               close: str | None = None) -> Recorded | Settled:
        """Record ``event`` (settling ``hold_id``; closing the open call ``close`` with
        it, see ``store.record_and_delete_state``), or spool it while Redis is down."""
        check_event(event)  # refused before it can reach the spool or the shared totals
        if len(self.spool) and not self._link.backing_off():
            await self._drain()
        if not len(self.spool) and not self._link.backing_off():
            try:
                fresh = await self._record_now(event, hold_id, scopes, close)
            except DOWN as exc:
                self._link.mark_down(exc)
            else:
                self._mark_up()
                return fresh
        # Redis unreachable (or older writes still queued): keep order, never lose usage;
        # the open call's delete right after its event: replayed as one step
        self.spool.append(SpooledEvent(event, hold_id))
        self._spooled += 1
        if close is not None:
            self.spool.append(SpooledState(OPEN_CALL, close, None))
        _log.warning("redis_usage_spooled", namespace=self.namespace, event_id=event.event_id,
                     pending=len(self.spool))
        return RECORDED, ()  # the versions are known once replayed

    async def record(self, event: UsageEvent) -> bool:
        return bool((await self._record_or_spool(event, "", ()))[0])

    def commit(self, event: UsageEvent, hold: Hold | None = None,
               close: str | None = None) -> Awaitable[Recorded | Settled]:
        """Record ``event``, settling ``hold`` (None: none) and closing the open call
        ``close`` (its key; None: none) in one script, answering the outcome and the
        version each of the event's scopes reached with it (see :data:`Recorded`): a
        tracker's scopes then tell whether a snapshot of the shared totals already holds
        the event; settling ``hold``, with its scopes' totals too (:data:`Settled`).
        Returns the write itself (no coroutine more per charge)."""
        if hold is None or hold.local:
            return self._record_or_spool(event, "", (), close)
        return self._record_or_spool(event, hold.hold_id, hold.scopes, close)

    async def record_and_delete_state(self, event: UsageEvent, kind: str, key: str) -> int:
        """One script for an open call's record (``store.record_and_delete_state``)."""
        if kind == OPEN_CALL:
            return (await self._record_or_spool(event, "", (), key))[0]
        fresh = await self.record(event)
        await self.delete_state(kind, key)
        return int(fresh)

    async def charge_open_call(self, estimate: UsageEvent, key: str,
                               mark: dict[str, Any]) -> bool | tuple[int, ...]:
        """See ``store.charge_open_call``: one script, never spooled; when charged, the
        version each of the estimate's scopes reached (see :meth:`commit`)."""
        check_event(estimate)
        if self.spool.pending() and not self._link.backing_off():
            await self._drain()  # a settle among the spooled writes goes first
        if len(self.spool) or self._link.backing_off():
            raise StoreUnavailableError(f"Redis unreachable; open call {key} not charged")
        keys = [*self._record_keys(estimate, ()), self.key("state", OPEN_CALL),
                self.key("state", ESTIMATED_CHARGE)]
        args = (*record_args(estimate, ""), key, json.dumps(mark, sort_keys=True))
        try:
            fresh, versions = recorded_reply(await self._link.script("charge_open", keys, args))
        except DOWN as exc:
            raise self._link.unavailable("charge_open_call", exc) from exc
        self._mark_up()
        return versions if fresh else False

    async def flush(self) -> int:
        """Replay the spool now; return how many events are still pending."""
        await self._drain()
        return len(self.spool)

    async def totals_with_version(self, scope: str) -> tuple[Totals, int]:
        """:meth:`totals` and their version (see :meth:`commit`): the spooled usage
        replayed first, or added while it cannot be (recorded, like SQLite's).  The spool
        is every process's that shares it (``serve`` replicas in one directory), as a
        SQLite file's is."""
        spooled = self._spooled
        if not self.spool.pending() and not self._draining.locked():
            read = await self._totals_now(scope, with_spool=False)
            if self._spooled == spooled:
                return read
            # a charge of this process was spooled during the read: read with the spool
        if not self._link.backing_off():
            await self._drain()
        async with self._draining, spool_read_lock(self.spool.path):  # no replay half done
            return await self._totals_now(scope, with_spool=True)

    async def _totals_now(self, scope: str, *, with_spool: bool) -> tuple[Totals, int]:
        try:
            h = cast(dict[str, str], await self._link.client.hgetall(self.key("tot", scope)))
        except DOWN as exc:
            raise self._link.unavailable("totals", exc) from exc
        totals = totals_from_hash(h)
        if with_spool and self.spool.pending():  # read after Redis: a write spooled meanwhile
            add_spooled(totals, scope, self.spool.read())
        return totals, int(h.get("version", 0))

    async def totals(self, scope: str) -> Totals:
        return (await self.totals_with_version(scope))[0]

    async def events(self, *, task_id: str | None = None, day_from: str | None = None,
                     day_to: str | None = None) -> list[UsageEvent]:
        # what any process spooled while Redis was unreachable counts, as in the totals
        got, spooled = await self._read_with_spool(
            lambda _: read_events(self._link, self.key, task_id, day_from, day_to))
        return with_spooled_events(got, spooled, task_id, day_from, day_to)

    # -- state ---------------------------------------------------------------------

    async def _write_state_now(self, kind: str, key: str, value: dict[str, Any] | None) -> None:
        conn = self._link.client
        if value is None:
            await conn.hdel(self.key("state", kind), key)
        else:
            await conn.hset(self.key("state", kind), key, json.dumps(value, sort_keys=True))

    async def _write_state(self, kind: str, key: str, value: dict[str, Any] | None) -> None:
        """Write through, or spool while Redis is down (a task finishing mid-outage)."""
        if len(self.spool) and not self._link.backing_off():
            await self._drain()
        if not len(self.spool) and not self._link.backing_off():
            try:
                await self._write_state_now(kind, key, value)
            except DOWN as exc:
                self._link.mark_down(exc)
            else:
                self._mark_up()
                return
        self.spool.append(SpooledState(kind, key, value))
        _log.warning("redis_state_spooled", namespace=self.namespace, kind=kind, key=key)

    async def put_state(self, kind: str, key: str, value: dict[str, Any]) -> None:
        await self._write_state(kind, key, value)

    async def put_state_if_absent(self, kind: str, key: str, value: dict[str, Any]) -> bool:
        """``HSETNX``: the record is written unless ``kind``/``key`` has one (``True`` when
        written), atomically across every process.  Never spooled: raises
        :class:`StoreUnavailableError` while Redis is down or writes wait in the spool."""
        if self.spool.pending() and not self._link.backing_off():
            await self._drain()
        if len(self.spool) or self._link.backing_off():
            raise StoreUnavailableError(f"Redis unreachable; cannot claim {kind} {key}")
        try:
            added = await self._link.client.hsetnx(
                self.key("state", kind), key, json.dumps(value, sort_keys=True))
        except DOWN as exc:
            raise self._link.unavailable("put_state_if_absent", exc) from exc
        self._mark_up()
        return bool(added)

    async def get_state(self, kind: str, key: str) -> dict[str, Any] | None:
        raw, entries = await self._read_with_spool(
            lambda c: c.hget(self.key("state", kind), key))
        spooled = spooled_state(entries, kind)
        if key in spooled:  # written while Redis was unreachable, not replayed yet
            return spooled[key]
        return json.loads(raw) if raw is not None else None

    async def list_state(self, kind: str) -> dict[str, dict[str, Any]]:
        h, entries = await self._read_with_spool(lambda c: c.hgetall(self.key("state", kind)))
        return with_spooled({k: json.loads(v) for k, v in h.items()}, entries, kind)

    async def _read_with_spool(self, read: Callable[[Any], Awaitable[Any]]
                               ) -> tuple[Any, list[SpooledEvent | SpooledState]]:
        """``read``'s answer from Redis and the writes still in the spool (any process's),
        newer than Redis's.  Redis is read first, under the spool's read lock as
        :meth:`totals_with_version` reads: a replay half done has a write in both."""
        if not self.spool.pending() and not self._draining.locked():
            return await self._read_state_now(read), []
        if not self._link.backing_off():
            await self._drain()
        async with self._draining, spool_read_lock(self.spool.path):
            raw = await self._read_state_now(read)
            return raw, self.spool.read() if self.spool.pending() else []

    async def _read_state_now(self, read: Callable[[Any], Awaitable[Any]]) -> Any:
        try:
            return await read(self._link.client)
        except DOWN as exc:
            raise self._link.unavailable("state", exc) from exc

    async def delete_state(self, kind: str, key: str) -> None:
        await self._write_state(kind, key, None)

    # -- BudgetLedger --------------------------------------------------------------

    async def try_reserve(
        self, hold_id: str, limits: tuple[ScopeLimit, ...], *, model: str, tokens: int,
        cost_usd: float,
    ) -> Hold:
        if self.spool.pending() and not await self._replayed_all():
            down = StoreUnavailableError("usage spooled while Redis was unreachable is not "
                                         "replayed yet")
            return self._allowance.take(down, hold_id, limits, model, tokens, cost_usd)
        keys: list[str] = []
        args: list[Any] = [hold_id, tokens, repr(cost_usd), model,
                           int(self.config.hold_ttl_s * 1000), self._now_arg()]
        for lim in limits:
            keys += [self.key("tot", lim.scope), self.key("holds", lim.scope),
                     self.key("amts", lim.scope)]
            args += [limit_arg(lim.tokens), limit_arg(lim.model_tokens), limit_arg(lim.cost_usd)]
        args.append(holder())
        if self._link.backing_off():
            down = StoreUnavailableError("Redis unreachable moments ago; retrying shortly")
            return self._allowance.take(down, hold_id, limits, model, tokens, cost_usd)
        spooled, scopes = self._spooled, tuple(lim.scope for lim in limits)
        try:
            reply = await self._link.script("try_reserve", keys, args)
            if int(reply[0]) == 0 and await prune_dead_holds(self._link, self.key, scopes):
                reply = await self._link.script("try_reserve", keys, args)  # room freed
        except DOWN as exc:
            self._link.mark_down(exc)
            return self._allowance.take(exc, hold_id, limits, model, tokens, cost_usd)
        self._mark_up()
        if int(reply[0]) == 0:
            _, j, dim, used, held, limit = reply
            raise BudgetExceededError(
                scopes[int(j)], str(dim), float(used) + float(held), float(limit),
                cost_usd if dim == "cost_usd" else tokens, held=float(held), shared=True)
        totals: dict[str, Totals] = {}
        held_by: dict[str, tuple[int, float]] = {}
        versions: dict[str, int] = {}
        for scope, (tot, s, c) in zip(scopes, json.loads(reply[2]), strict=True):
            tot = tot if isinstance(tot, dict) else {}  # cjson encodes an empty table as []
            totals[scope] = totals_from_hash(tot)
            versions[scope] = int(tot.get("version", 0))
            held_by[scope] = (int(s), float(c))
        if self._spooled != spooled:  # a charge spooled meanwhile: not in this snapshot, whose
            totals, versions = {}, {}  # versions cannot tell; this process keeps its own view
        return Hold(hold_id, scopes, model, tokens, cost_usd, totals, held_by, versions=versions)

    async def _replayed_all(self) -> bool:
        """Replay the spool -- every process's writes in it: a hold is checked against all
        the usage, as on SQLite -- waiting for a replay another process has under way;
        whether none is left (else the hold is not checked against Redis alone)."""
        if not self._link.backing_off():
            await self._drain()
        if len(self.spool) and not self._link.backing_off():
            async with spool_read_lock(self.spool.path):  # held once that replay ended
                pass
            if self.spool.pending():
                await self._drain()
        return not self.spool.pending()

    async def settle(self, event: UsageEvent, hold: Hold) -> bool:
        return bool((await self.commit(event, hold))[0])

    async def settle_and_delete_state(self, event: UsageEvent, hold: Hold, kind: str,
                                      key: str) -> int:
        """:meth:`settle` and :meth:`record_and_delete_state` in one script."""
        if kind != OPEN_CALL:
            fresh = int(await self.settle(event, hold))
            await self.delete_state(kind, key)
            return fresh
        return (await self.commit(event, hold, key))[0]

    async def renew(self, hold: Hold) -> bool:
        """Extend ``hold`` by ``hold_ttl_s`` from now; ``False`` when it had already expired
        (or Redis is unreachable: the hold then expires on its own)."""
        if hold.local:
            return True
        try:
            n = await self._link.script("renew_hold", self._hold_keys(hold.scopes),
                                   [hold.hold_id, int(self.config.hold_ttl_s * 1000),
                                    self._now_arg()])
        except DOWN as exc:
            self._link.mark_down(exc)
            return False
        return int(n) > 0

    async def release(self, hold: Hold) -> None:
        if hold.local:
            return
        try:
            await self._link.script("release", self._hold_keys(hold.scopes), [hold.hold_id])
        except DOWN as exc:  # the hold expires on its own after hold_ttl_s
            self._link.mark_down(exc)

    # -- SliceBackend --------------------------------------------------------------

    async def lease_slice(
        self, pool: str, holder: str, *, demand: int, capacity: int, ttl_s: float,
        level: float | None = None,
    ) -> SliceGrant:
        """Grant or renew ``holder``'s slice (raises StoreUnavailableError when down)."""
        return await self._slices.lease(pool, holder, demand=demand, capacity=capacity,
                                        ttl_s=ttl_s, level=level)

    async def release_slice(self, pool: str, holder: str) -> None:
        await self._slices.release(pool, holder)

    async def slice_shortfalls(self, pools: Sequence[str]) -> list[int]:
        return await self._slices.shortfalls(pools)

