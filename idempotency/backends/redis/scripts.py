"""The compare-and-set steps, as Lua scripts, and the calls that run them.

Redis runs each script atomically, so nothing can happen between reading a
record and replacing it. Each script touches a single key, KEYS[1], so it
runs on the master of that key's slot, as a Redis Cluster requires (the
records need no hash tags: no script or command names two of them). PUBLISH
on a cluster reaches every node, so a waiter hears of the record on whichever
node it subscribed to, before and after the slot moves; sharded pub/sub
(SPUBLISH, Redis 7) would keep the message on the slot's shard but loses
subscribers when the slot moves, and needs Redis 7. Proven on a real cluster
by tests/test_redis_cluster.py (idempotency.backends.redis.cluster).
"""

from __future__ import annotations

import secrets
from datetime import timedelta
from typing import Any

from ..base import Claim, Completion, StoredResponse
from .records import COMPLETED, Entry, Mine, encode, milliseconds

# Redis's SET NX is the claim; the script only saves the round trip that a
# duplicate would otherwise spend reading what is in its way.
CLAIM = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
    return false
end
return redis.call('GET', KEYS[1])
"""
# Only the owner of a claim may replace or remove it: a worker whose lease
# expired must not touch the record of the worker that took the key over.
# If nobody did, the key is free and the late response is stored all the
# same, so that retries replay it instead of running the handler again.
# Returns 1 (stored), 2 (stored after the lease ran out) or what holds the
# key now. Duplicates waiting for the key (RedisStore.wait) hear of it on
# the channel of the record's name.
COMPLETE = """
local current = redis.call('GET', KEYS[1])
if current == ARGV[1] or not current then
    redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
    redis.call('PUBLISH', KEYS[1], 'completed')
    if current then return 1 end
    return 2
end
return current
"""
# The accelerator's writes: a copy of a committed record, or a tombstone
# for a deleted one, each naming its record's id (ARGV[3]; ids only grow).
# A write never replaces what names a newer record, and a copy never
# replaces its own record's tombstone: a retry that read a record just
# before it was deleted must not put its copy back after the deletion.
# Ids are compared as decimal strings, since Lua's numbers lose 64-bit ones.
PUT = """
local current = redis.call('GET', KEYS[1])
if current then
    local newline = string.find(current, '\\n', 1, true)
    local ok, header = false, nil
    if newline then
        ok, header = pcall(cjson.decode, string.sub(current, 1, newline - 1))
    end
    if ok and type(header) == 'table' and header.record then
        local held, mine = tostring(header.record), ARGV[3]
        if #held > #mine or (#held == #mine and held > mine) then
            return 0
        end
        if held == mine and header.state == 'deleted' and ARGV[4] ~= 'deleted' then
            return 0
        end
    end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    redis.call('PUBLISH', KEYS[1], 'released')
    return redis.call('DEL', KEYS[1])
end
return 0
"""

# Each call raises one of ``client.errors()`` if Redis cannot be reached.


def claim_or_read(
    client: Any, key: str, fingerprint: str, lifetime: timedelta
) -> Mine | Claim | None:
    """Set an in-flight value of our own under ``key`` unless one is there
    (``SET NX``): return ours, or what is in the way, or ``None`` if that is
    not a record this package wrote (another program writing under its
    prefix)."""
    mine = Mine(key, secrets.token_hex(16), fingerprint)
    found = client.eval(CLAIM, 1, key, mine.value, milliseconds(lifetime))
    if found is None:
        return mine
    try:
        return Entry.decode(found).claim()
    except (ValueError, KeyError, TypeError):
        return None


def complete(client: Any, mine: Mine, response: StoredResponse, ttl: timedelta) -> Completion:
    """Store the response if the claim is still ours, or if its lease ran
    out and nobody claimed the key since; otherwise say who has it."""
    value = encode(COMPLETED, mine.owner, mine.fingerprint, response)
    found = client.eval(COMPLETE, 1, mine.key, mine.value, value, milliseconds(ttl))
    if found == 1:
        return Completion.STORED
    if found == 2:
        return Completion.STORED_LATE
    try:
        taken = Entry.decode(found).state == COMPLETED
    except (ValueError, KeyError, TypeError):
        taken = False  # not a record this package wrote
    return Completion.REDONE if taken else Completion.TAKEN_OVER


def release(client: Any, mine: Mine) -> bool:
    """Remove our in-flight value, unless it is no longer ours."""
    return bool(client.eval(RELEASE, 1, mine.key, mine.value))


def put(
    client: Any, key: str, value: bytes, lifetime: timedelta, record_id: int, kind: str
) -> bool:
    """Write the accelerator's copy or tombstone (``kind``: its state) of
    record ``record_id``, unless what holds ``key`` must stay (see PUT)."""
    return bool(client.eval(PUT, 1, key, value, milliseconds(lifetime), str(record_id), kind))
