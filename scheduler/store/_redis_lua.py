"""Lua scripts of :class:`~scheduler.store._redis.RedisStore`.

Each script runs atomically inside Redis.  They are loaded once per
connection pool (``SCRIPT LOAD``) and called by SHA (``EVALSHA``); a
``NOSCRIPT`` reply (Redis restarted or ``SCRIPT FLUSH``) reloads them.

Times are milliseconds.  A script uses the Redis server's clock (``TIME``)
unless the caller passes ``now_ms`` (tests with a virtual clock), so several
machines with skewed clocks still agree on when a hold or a slice expires.
Every key a script touches carries the deployment's hash tag (``vibe:{namespace}:…``),
so the scripts also work on a Redis Cluster; each is passed in ``KEYS`` but those of an
estimate ``SETTLE_OPEN`` takes back (known only inside the script, same slot).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from scheduler.core import Totals, UsageEvent
from scheduler.store._base import scopes_of
from scheduler.store._ledger import SHORT_FRACTION, Recorded, Settled

_NOW = """
local function now_ms(arg)
  if arg ~= nil and arg ~= '' then return tonumber(arg) end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""

_RELEASE_HOLD = """
local function release_hold(holds, amts, id)
  local tok = redis.call('HGET', amts, id)
  if not tok then return 0 end
  local cost = redis.call('HGET', amts, id .. '|c') or '0'
  local model = redis.call('HGET', amts, id .. '|m') or ''
  redis.call('HDEL', amts, id, id .. '|c', id .. '|m', id .. '|p')
  redis.call('ZREM', holds, id)
  redis.call('HINCRBY', amts, '__sum', -tonumber(tok))
  redis.call('HINCRBYFLOAT', amts, '__cost', -tonumber(cost))
  if model ~= '' then redis.call('HINCRBY', amts, '__m:' .. model, -tonumber(tok)) end
  return 1
end
"""

#: Records one usage event (idempotent on its id): ``record_event(last)`` -> 1 if fresh.
#: KEYS: events, all, seq, task index, day index, then the event's totals up to ``last``.
#: ARGV: id, json, model, prompt, completion, cache_read, cache_write, cost,
#:       file_edits, shell, dangerous.
#: Every event applied to a totals hash bumps its ``version``: a snapshot of the totals at
#: version ``w`` holds every event that brought them to a version up to ``w`` (a process
#: tells by it whether a snapshot already holds a charge of its own); ``versions`` gets
#: the version each of the event's totals reached.
_RECORD_EVENT = """
local versions = {}
local function record_event(last)
  local fresh = redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2])
  if fresh == 1 then
    local seq = redis.call('INCR', KEYS[3])
    redis.call('ZADD', KEYS[2], seq, ARGV[1])
    redis.call('ZADD', KEYS[4], seq, ARGV[1])
    redis.call('ZADD', KEYS[5], seq, ARGV[1])
    local names = {'prompt_tokens', 'completion_tokens', 'cache_read_tokens',
                   'cache_write_tokens'}
    local total = 0
    for i = 1, 4 do total = total + tonumber(ARGV[3 + i]) end
    local ops = {'file_edits', 'shell_commands', 'dangerous_commands'}
    for k = 6, last do
      for i = 1, 4 do
        local v = tonumber(ARGV[3 + i])
        if v ~= 0 then redis.call('HINCRBY', KEYS[k], names[i], v) end
      end
      redis.call('HINCRBY', KEYS[k], 'tokens', total)
      if tonumber(ARGV[8]) ~= 0 then redis.call('HINCRBYFLOAT', KEYS[k], 'cost_usd', ARGV[8]) end
      for i = 1, 3 do
        local v = tonumber(ARGV[8 + i])
        if v ~= 0 then redis.call('HINCRBY', KEYS[k], ops[i], v) end
      end
      if ARGV[3] ~= '' then
        redis.call('HINCRBY', KEYS[k], 'calls', 1)
        redis.call('HINCRBY', KEYS[k], 'm:' .. ARGV[3], total)
      end
      versions[k - 5] = redis.call('HINCRBY', KEYS[k], 'version', 1)
    end
  end
  return fresh
end
"""

#: The reply of a record script: {fresh, the versions...}, and when it settled a hold and
#: recorded the event, the N totals as it left them (JSON, HGETALL lists) last: every
#: process's spend, which the charge's alerts count (R3.1), in the same step.
_REPLY = """
local function reply(fresh, last, hold)
  local out = {fresh}
  for i = 1, #versions do out[i + 1] = versions[i] end
  if fresh ~= 0 and hold ~= '' then
    local seen = {}
    for k = 6, last do seen[k - 5] = redis.call('HGETALL', KEYS[k]) end
    out[#out + 1] = cjson.encode(seen)
  end
  return out
end
"""

#: Record one usage event and optionally settle a hold.
#: KEYS: as ``record_event``, then (holds, amts) pairs.
#: ARGV: as ``record_event``, then hold id ('' for none), N (the event's scopes).
#: Returns {0} for a duplicate, else {1, then the version each of the N totals reached}
#: (see ``_REPLY``).
RECORD = _RELEASE_HOLD + _RECORD_EVENT + _REPLY + """
local last = 5 + tonumber(ARGV[13])
local fresh = record_event(last)
if ARGV[12] ~= '' then
  for i = last + 1, #KEYS, 2 do release_hold(KEYS[i], KEYS[i + 1], ARGV[12]) end
end
return reply(fresh, last, ARGV[12])
"""

#: Take back the estimate charged for open call ``key`` (its ``estimated_charge`` record
#: in ``marks``): its event, its index entries and its amounts in the totals of the scopes
#: the record names.  Those keys are derived here from ``prefix`` (the estimate is known
#: only inside the script); they carry the hash tag of every key passed, one slot.
_TAKE_BACK = """
local function take_back(marks, key, prefix)
  local raw = redis.call('HGET', marks, key)
  if not raw then return 0 end
  redis.call('HDEL', marks, key)
  local mark = cjson.decode(raw)
  local id = mark['charged_event_id'] or ''
  local doc = redis.call('HGET', KEYS[1], id)
  if not doc then return 0 end
  redis.call('HDEL', KEYS[1], id)
  local e = cjson.decode(doc)
  redis.call('ZREM', KEYS[2], id)
  redis.call('ZREM', prefix .. 'ev:task:' .. e['task_id'], id)
  redis.call('ZREM', prefix .. 'ev:day:' .. e['day'], id)
  local amounts = {prompt_tokens = e['prompt_tokens'], completion_tokens =
    e['completion_tokens'], cache_read_tokens = e['cache_read_tokens'],
    cache_write_tokens = e['cache_write_5m_tokens'] + e['cache_write_1h_tokens'],
    file_edits = e['file_edits'], shell_commands = e['shell_commands'],
    dangerous_commands = e['dangerous_commands']}
  local total = amounts.prompt_tokens + amounts.completion_tokens
    + amounts.cache_read_tokens + amounts.cache_write_tokens
  for _, scope in ipairs(mark['scopes'] or {}) do
    local tot = prefix .. 'tot:' .. scope
    for name, v in pairs(amounts) do
      if v ~= 0 then redis.call('HINCRBY', tot, name, -v) end
    end
    redis.call('HINCRBY', tot, 'tokens', -total)
    if e['cost_usd'] ~= 0 then redis.call('HINCRBYFLOAT', tot, 'cost_usd', -e['cost_usd']) end
    if e['model'] ~= '' then
      redis.call('HINCRBY', tot, 'calls', -1)
      redis.call('HINCRBY', tot, 'm:' .. e['model'], -total)
    end
    redis.call('HINCRBY', tot, 'version', 1)  -- a snapshot before holds the estimate
  end
  return 1
end
"""

#: Record a call's usage, settle its hold and delete its ``open_call`` record in one
#: step; an estimate charged for it meanwhile (its record gone) is taken back.
#: Returns as ``RECORD``, with 2 in place of 1 when an estimate was taken back.
#: KEYS: as ``RECORD``, then the open_call and estimated_charge state hashes.
#: ARGV: as ``RECORD``, then the call's key, the key prefix.
SETTLE_OPEN = _RELEASE_HOLD + _RECORD_EVENT + _TAKE_BACK + _REPLY + """
local n = #KEYS
local last = 5 + tonumber(ARGV[13])
local fresh = record_event(last)
if ARGV[12] ~= '' then
  for i = last + 1, n - 2, 2 do release_hold(KEYS[i], KEYS[i + 1], ARGV[12]) end
end
local gone = redis.call('HDEL', KEYS[n - 1], ARGV[14]) == 0
if fresh == 1 and gone and take_back(KEYS[n], ARGV[14], ARGV[15]) == 1 then fresh = 2 end
return reply(fresh, last, ARGV[12])
"""

#: Charge an open call at its estimate, unless it settled meanwhile (``charge_open_call``).
#: KEYS: as ``RECORD`` without holds, then the open_call and estimated_charge hashes.
#: ARGV: as ``RECORD``, then the call's key, its estimated_charge record (JSON).
CHARGE_OPEN = _RECORD_EVENT + """
local n = #KEYS
if redis.call('HDEL', KEYS[n - 1], ARGV[14]) == 0 then return {0} end
if redis.call('HEXISTS', KEYS[1], ARGV[14]) == 1 then return {0} end
local fresh = record_event(5 + tonumber(ARGV[13]))
if fresh == 1 then redis.call('HSET', KEYS[n], ARGV[14], ARGV[15]) end
return {fresh, unpack(versions)}
"""

#: Charge-if-within-budget: hold ``tokens``/``cost`` against every scope, or nothing.
#: KEYS: per scope (totals, holds, amts).
#: ARGV: hold id, tokens, cost, model, ttl_ms, now_ms ('' = server time), then per
#:       scope (limit tokens, limit model tokens, limit cost), '' = unlimited, then the
#:       holding process (``_redis_holds.holder``: its holds are freed once it is gone).
#: Returns {1, now, JSON [[totals, held tokens, held cost], ...]} (one JSON string: cheap to
#: parse) or {0, scope index, dimension, used, held, limit}.  The totals carry their
#: ``version`` (``record_event``).
TRY_RESERVE = _NOW + _RELEASE_HOLD + """
local id, tokens, cost, model = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local ttl, now = tonumber(ARGV[5]), now_ms(ARGV[6])
local n = #KEYS / 3
for j = 0, n - 1 do
  local holds, amts = KEYS[3 * j + 2], KEYS[3 * j + 3]
  local expired = redis.call('ZRANGEBYSCORE', holds, '-inf', now)
  for _, old in ipairs(expired) do release_hold(holds, amts, old) end
end
local fresh = redis.call('HEXISTS', KEYS[3], id) == 0
if fresh then
  for j = 0, n - 1 do
    local tot, amts = KEYS[3 * j + 1], KEYS[3 * j + 3]
    local lt, lm, lc = ARGV[7 + 3 * j], ARGV[8 + 3 * j], ARGV[9 + 3 * j]
    if lt ~= '' and tokens > 0 then
      local used = tonumber(redis.call('HGET', tot, 'tokens') or '0')
      local held = tonumber(redis.call('HGET', amts, '__sum') or '0')
      if used + held + tokens > tonumber(lt) then
        return {0, j, 'tokens', tostring(used), tostring(held), lt}
      end
    end
    if lm ~= '' and model ~= '' and tokens > 0 then
      local used = tonumber(redis.call('HGET', tot, 'm:' .. model) or '0')
      local held = tonumber(redis.call('HGET', amts, '__m:' .. model) or '0')
      if used + held + tokens > tonumber(lm) then
        return {0, j, 'tokens:' .. model, tostring(used), tostring(held), lm}
      end
    end
    if lc ~= '' and cost > 0 then
      local used = tonumber(redis.call('HGET', tot, 'cost_usd') or '0')
      local held = tonumber(redis.call('HGET', amts, '__cost') or '0')
      if used + held + cost > tonumber(lc) then
        return {0, j, 'cost_usd', tostring(used), tostring(held), lc}
      end
    end
  end
  for j = 0, n - 1 do
    local holds, amts = KEYS[3 * j + 2], KEYS[3 * j + 3]
    redis.call('ZADD', holds, now + ttl, id)
    redis.call('HSET', amts, id, tokens, id .. '|c', ARGV[3], id .. '|m', model,
               id .. '|p', ARGV[7 + 3 * n] or '')
    redis.call('HINCRBY', amts, '__sum', tokens)
    redis.call('HINCRBYFLOAT', amts, '__cost', ARGV[3])
    if model ~= '' then redis.call('HINCRBY', amts, '__m:' .. model, tokens) end
  end
end
local scopes = {}
for j = 0, n - 1 do
  local flat = redis.call('HGETALL', KEYS[3 * j + 1])
  local t = {}
  for i = 1, #flat, 2 do t[flat[i]] = flat[i + 1] end
  local held = redis.call('HMGET', KEYS[3 * j + 3], '__sum', '__cost')
  scopes[j + 1] = {t, held[1] or '0', held[2] or '0'}
end
return {1, now, cjson.encode(scopes)}
"""

#: Release a hold without charging. KEYS: (holds, amts) pairs. ARGV: hold id.
RELEASE = _RELEASE_HOLD + """
local n = 0
for i = 1, #KEYS, 2 do n = n + release_hold(KEYS[i], KEYS[i + 1], ARGV[1]) end
return n
"""

#: The level of a pool's unassigned capacity (``free``, stamped ``at``) refilled to ``now``:
#: that capacity refills like the provider's bucket, at its rate, up to its size; capacity
#: nobody has held yet (no ``at``) is full.  KEYS[4] is the pool's ``meta`` hash.
_FREE_LEVEL = """
local function free_level(meta, unassigned, now)
  local at = tonumber(redis.call('HGET', meta, 'at'))
  if at == nil then return unassigned end
  local free = tonumber(redis.call('HGET', meta, 'free')) or 0
  return math.min(unassigned, free + math.max(now - at, 0) * unassigned / 60000)
end
local function sum_grants(grants)
  local total, gs = 0, redis.call('HGETALL', grants)
  for i = 1, #gs, 2 do total = total + tonumber(gs[i + 1]) end
  return total
end
"""

#: Lease (grant or renew) a slice of a global pool, max-min fair between holders.
#: KEYS: grants hash, demands hash, expiries zset, meta hash (``short``, ``free``, ``at``).
#: ARGV: holder, demand, capacity, ttl_ms, now_ms ('' = server time), the holder's bucket
#: level now ('' = unknown: 0).
#: A holder that shrinks gives the level above its new grant back to the unassigned
#: capacity; one that grows takes up to the unassigned capacity's level with it (so the
#: holders' levels and the unassigned one never add up to more than the capacity: the
#: fleet bursts no more than one bucket of the provider's size).  A holder granted less
#: than its fair share bumps ``short``, which the others poll to renew at once.
#: Returns {granted, fair share, live holders, expires_at_ms, level credit, short}.
LEASE_SLICE = _NOW + _FREE_LEVEL + """
local grants, demands, exp, meta = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local holder, demand, cap = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local ttl, now = tonumber(ARGV[4]), now_ms(ARGV[5])
local level = tonumber(ARGV[6]) or 0
local free = free_level(meta, math.max(cap - sum_grants(grants), 0), now)
local dead = redis.call('ZRANGEBYSCORE', exp, '-inf', now)
for _, h in ipairs(dead) do
  redis.call('HDEL', grants, h)
  redis.call('HDEL', demands, h)
  redis.call('ZREM', exp, h)
end
redis.call('HSET', demands, holder, demand)
redis.call('ZADD', exp, now + ttl, holder)
local all = redis.call('HVALS', demands)
local ds = {}
for i, v in ipairs(all) do ds[i] = tonumber(v) end
table.sort(ds)
local left, lvl, n = cap, nil, #ds
for i, d in ipairs(ds) do
  local share = left / (n - i + 1)
  if d > share then lvl = share; break end
  left = left - d
end
if lvl == nil then lvl = demand end
local fair = math.floor(math.min(demand, lvl))
local mine = tonumber(redis.call('HGET', grants, holder)) or 0
local others = sum_grants(grants) - mine
local grant = math.max(0, math.min(fair, cap - others))
redis.call('HSET', grants, holder, grant)
local credit = 0
if grant > mine then
  credit = math.floor(math.min(grant - mine, free))
  free = free - credit
else
  free = free + math.max(math.min(level, mine) - grant, 0)
end
local short = tonumber(redis.call('HGET', meta, 'short')) or 0
if grant < fair * """ + repr(SHORT_FRACTION) + """ then
  short = redis.call('HINCRBY', meta, 'short', 1)
end
free = math.min(free, math.max(cap - others - grant, 0))
redis.call('HSET', meta, 'free', tostring(free), 'at', now, 'cap', cap)
return {grant, fair, n, now + ttl, credit, short}
"""

#: Give a slice back (its level is not returned: the holder may have spent it).
#: KEYS: grants, demands, expiries, meta. ARGV: holder, now_ms ('' = server time).
RELEASE_SLICE = _NOW + _FREE_LEVEL + """
local now = now_ms(ARGV[2])
local cap = tonumber(redis.call('HGET', KEYS[4], 'cap')) or 0
local unassigned = math.max(cap - sum_grants(KEYS[1]), 0)
redis.call('HSET', KEYS[4], 'free', tostring(free_level(KEYS[4], unassigned, now)), 'at', now)
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return redis.call('ZREM', KEYS[3], ARGV[1])
"""

#: Keep a hold alive (its call still waits for a provider lease).
#: KEYS: (holds, amts) pairs. ARGV: hold id, ttl_ms, now_ms ('' = server time).
#: Returns how many scopes still had the hold (0: it had already expired).
RENEW_HOLD = _NOW + """
local id, ttl, now = ARGV[1], tonumber(ARGV[2]), now_ms(ARGV[3])
local n = 0
for i = 1, #KEYS, 2 do
  if redis.call('ZSCORE', KEYS[i], id) then
    redis.call('ZADD', KEYS[i], 'XX', now + ttl, id)
    n = n + 1
  end
end
return n
"""

SCRIPTS: dict[str, str] = {
    "record": RECORD,
    "settle_open": SETTLE_OPEN,
    "charge_open": CHARGE_OPEN,
    "renew_hold": RENEW_HOLD,
    "try_reserve": TRY_RESERVE,
    "release": RELEASE,
    "lease_slice": LEASE_SLICE,
    "release_slice": RELEASE_SLICE,
}


def record_args(event: UsageEvent, hold_id: str) -> tuple[Any, ...]:
    """The ARGV of :data:`RECORD` for ``event`` (settling ``hold_id``, "" for none)."""
    u = event.usage
    return (event.event_id, json.dumps(event.to_dict(), sort_keys=True), event.model,
            u.prompt_tokens, u.completion_tokens, u.cache_read_tokens, u.cache_write_tokens,
            repr(event.cost_usd), event.file_edits, event.shell_commands,
            event.dangerous_commands, hold_id, len(scopes_of(event)))


_INT_FIELDS = (
    "prompt_tokens", "completion_tokens", "cache_read_tokens", "cache_write_tokens",
    "file_edits", "shell_commands", "dangerous_commands", "calls",
)


def totals_from_hash(h: dict[str, str] | Sequence[str]) -> Totals:
    """Parse a ``tot:<scope>`` hash (dict or flat HGETALL list) into :class:`Totals`."""
    if not isinstance(h, dict):
        h = dict(zip(h[::2], h[1::2], strict=True))
    t = Totals()
    for f in _INT_FIELDS:
        setattr(t, f, int(h.get(f, 0)))
    t.cost_usd = float(h.get("cost_usd", 0.0))
    t.tokens_by_model = {k[2:]: int(v) for k, v in h.items() if k.startswith("m:")}
    return t


def recorded_reply(reply: Sequence[Any]) -> Recorded:
    """A record script's reply ``{outcome, versions...}`` as :data:`Recorded`."""
    return int(reply[0]), tuple(int(v) for v in reply[1:])


def settled_reply(reply: Sequence[Any], scopes: Sequence[str],
                  held: Sequence[str]) -> Recorded | Settled:
    """A record script's reply (``_REPLY``) for an event of ``scopes`` (``scopes_of``):
    :data:`Settled` when it brings the totals (of the ``held`` scopes only: a task's
    scope of this session may share its name with another session's), else
    :data:`Recorded`."""
    last = reply[-1] if len(reply) > 1 else 0
    if not isinstance(last, (str, bytes)):  # versions are integers, the totals a string
        return recorded_reply(reply)
    read = {scope: totals_from_hash(h) for scope, h in zip(scopes, json.loads(last),
                                                            strict=False) if scope in held}
    return int(reply[0]), tuple(int(v) for v in reply[1:-1]), read


def limit_arg(v: float | None) -> str:
    """A limit as a script reads it: "" for none."""
    return "" if v is None else repr(v)
