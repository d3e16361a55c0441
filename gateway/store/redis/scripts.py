"""The Lua scripts of the Redis store: each is one atomic step on keys that share a hash tag.

Times are passed in by the caller (epoch seconds as text, or epoch milliseconds for key expiry).
Values stay the caller's text (a float's repr): Lua numbers would lose digits.
"""

from __future__ import annotations

# KEYS: deny:sub:{..}   ARGV: watermark, expires_at_ms   (both only move forward)
WATERMARK = """
local cur = redis.call('GET', KEYS[1])
local wm = ARGV[1]
if cur and tonumber(cur) >= tonumber(wm) then wm = cur end
local exp = tonumber(ARGV[2])
local old = redis.call('PEXPIRETIME', KEYS[1])
if old > exp then exp = old end
redis.call('SET', KEYS[1], wm, 'PXAT', exp)
"""

# Shared by INDEX and SWEEP (KEYS: deny:index, deny:values): drop at most ``most`` expired members (Lua's
# unpack takes a few thousand values, and no call may hold Redis for long); how many were dropped.
_DROP_EXPIRED = """
local function drop_expired(now, most)
  local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, most)
  if #dead > 0 then
    redis.call('HDEL', KEYS[2], unpack(dead))
    redis.call('ZREM', KEYS[1], unpack(dead))
  end
  return #dead
end
"""

# KEYS: deny:index, deny:values   ARGV: member, expires_at, value, now  ->  {value, expires_at} in force
# Value and expiry only move forward (two revokes of one subject may arrive in any order), and a few
# expired members are dropped on the way so that the index stays small between full loads.
INDEX = _DROP_EXPIRED + """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
local old = redis.call('HGET', KEYS[2], ARGV[1])
if score and tonumber(score) <= tonumber(ARGV[4]) then score = false; old = false end
if (not old) or tonumber(ARGV[3]) > tonumber(old) then redis.call('HSET', KEYS[2], ARGV[1], ARGV[3]) end
if (not score) or tonumber(ARGV[2]) > tonumber(score) then redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1]) end
drop_expired(ARGV[4], 100)
return {redis.call('HGET', KEYS[2], ARGV[1]), redis.call('ZSCORE', KEYS[1], ARGV[1])}
"""

# KEYS: deny:index, deny:values   ARGV: cursor, count, now  ->  {next cursor, member, expires_at, value, ...}:
# one ZSCAN page of the index (a reload reads it page by page), with the live entries' values
LIVE_PAGE = """
local page = redis.call('ZSCAN', KEYS[1], ARGV[1], 'COUNT', ARGV[2])
local entries, out, now = page[2], {page[1]}, tonumber(ARGV[3])
for i = 1, #entries, 2 do
  if tonumber(entries[i + 1]) > now then
    out[#out + 1] = entries[i]
    out[#out + 1] = entries[i + 1]
    out[#out + 1] = redis.call('HGET', KEYS[2], entries[i]) or '0'
  end
end
return out
"""

# KEYS: deny:index, deny:values   ARGV: now, most  ->  how many expired entries were dropped (at most most)
SWEEP = _DROP_EXPIRED + """
return drop_expired(ARGV[1], tonumber(ARGV[2]))
"""

# Shared by ADD_REFRESH and ROTATE: the family lives as long as its latest token.
_EXTEND_FAMILY = """
local function extend(key, exp_ms)
  if redis.call('PEXPIRETIME', key) < tonumber(exp_ms) then redis.call('PEXPIREAT', key, exp_ms) end
end
"""

# KEYS: refresh:{f}:<hash>, family:{f}
# ARGV: sub, exp, exp_ms, data, iss, hash, created, user_agent, client, method (the last four: a new family's)
ADD_REFRESH = _EXTEND_FAMILY + """
if redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('HSET', KEYS[2], 'sub', ARGV[1], 'iss', ARGV[5], 'dead', '0', 'created', ARGV[7],
             'last_used', ARGV[7], 'user_agent', ARGV[8], 'client', ARGV[9], 'method', ARGV[10])
end
redis.call('HSET', KEYS[1], 'sub', ARGV[1], 'exp', ARGV[2], 'data', ARGV[4], 'state', 'live')
redis.call('PEXPIREAT', KEYS[1], ARGV[3])
redis.call('HSET', KEYS[2], 'head', ARGV[6])
extend(KEYS[2], ARGV[3])
"""

# KEYS: refresh:{f}:<presented>, refresh:{f}:<successor>, family:{f}
# ARGV: now, grace_s, sealed_reply, successor hash, sub, exp, exp_ms, data
#  ->  {outcome, sub, exp, data[, sealed_reply]}
ROTATE = _EXTEND_FAMILY + """
local t = redis.call('HMGET', KEYS[1], 'state', 'exp', 'rotated_at', 'sub', 'data', 'sealed')
if (not t[1]) or redis.call('EXISTS', KEYS[3]) == 0 or tonumber(t[2]) <= tonumber(ARGV[1]) then
  return {'unknown'}
end
local dead = redis.call('HGET', KEYS[3], 'dead')   -- '0' while live, else why it ended
local live = dead == '0'
if t[1] == 'live' and live then
  redis.call('HSET', KEYS[1], 'state', 'rotated', 'rotated_at', ARGV[1], 'next', ARGV[4], 'sealed', ARGV[3])
  redis.call('HSET', KEYS[2], 'sub', ARGV[5], 'exp', ARGV[6], 'data', ARGV[8], 'state', 'live')
  redis.call('PEXPIREAT', KEYS[2], ARGV[7])
  redis.call('HSET', KEYS[3], 'head', ARGV[4], 'last_used', ARGV[1])
  extend(KEYS[3], ARGV[7])
  return {'ok', t[4], t[2], t[5]}
end
if live and t[3] and tonumber(ARGV[1]) - tonumber(t[3]) < tonumber(ARGV[2]) then
  return {'grace', t[4], t[2], t[5], t[6] or ''}
end
if dead == 'ended' then return {'ended', t[4], t[2], t[5]} end
redis.call('HSET', KEYS[3], 'dead', 'reused')
return {'reused', t[4], t[2], t[5]}
"""

# KEYS: refresh:{f}:<hash>, family:{f}  ->  {sub, exp, data} when live, else nil
FIND_REFRESH = """
local t = redis.call('HMGET', KEYS[1], 'state', 'sub', 'exp', 'data')
if t[1] ~= 'live' or redis.call('HGET', KEYS[2], 'dead') ~= '0' then return nil end
return {t[2], t[3], t[4]}
"""

# KEYS: family:{f}   ARGV: why it ends (ended | reused)  ->  {sub, "1" when this call killed it} or nil
# when unknown. A family that is dead already keeps the reason it died for.
KILL_FAMILY = """
local f = redis.call('HMGET', KEYS[1], 'sub', 'dead')
if not f[1] then return nil end
if f[2] and f[2] ~= '0' then return {f[1], '0'} end
redis.call('HSET', KEYS[1], 'dead', ARGV[1])
return {f[1], '1'}
"""

# KEYS: family:{f}   ARGV: iss, sub  ->  1 when this call ended that live family of exactly this subject, else 0
END_SESSION = """
local f = redis.call('HMGET', KEYS[1], 'sub', 'iss', 'dead')
if f[1] ~= ARGV[2] or f[2] ~= ARGV[1] or f[3] ~= '0' then return 0 end
redis.call('HSET', KEYS[1], 'dead', 'ended')
return 1
"""

# KEYS: a set   ARGV: member, expires_at_ms  ->  the set lives as long as its latest member
ADD_MEMBER = """
redis.call('SADD', KEYS[1], ARGV[1])
if redis.call('PEXPIRETIME', KEYS[1]) < tonumber(ARGV[2]) then redis.call('PEXPIREAT', KEYS[1], ARGV[2]) end
"""

# KEYS: user:{name}   ARGV: field, value, ...  ->  1 when created, 0 when the name is taken
ADD_USER = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
"""

# KEYS: user:{name}   ARGV: field, value, ...   (fields left out, like a removed email, must go too)
PUT_USER = """
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV))
"""

# KEYS: rate:{bucket}   ARGV: limit, window_s  ->  0 when allowed, else milliseconds until the window ends
HIT = """
local n = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[2], 'NX')
if n <= tonumber(ARGV[1]) then return 0 end
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  ttl = tonumber(ARGV[2]) * 1000
end
if ttl < 1 then ttl = 1 end
return ttl
"""

# KEYS: reset-of:{user}   ARGV: hash, expires_at, expires_at_ms  ->  the hash it replaced (or nil)
PUT_RESET = """
local older = redis.call('HGET', KEYS[1], 'hash')
redis.call('HSET', KEYS[1], 'hash', ARGV[1], 'exp', ARGV[2])
redis.call('PEXPIREAT', KEYS[1], ARGV[3])
return older
"""

# KEYS: reset-of:{user}   ARGV: hash, now  ->  1 when that was the user's current, unexpired token (now gone)
TAKE_RESET = """
local cur = redis.call('HMGET', KEYS[1], 'hash', 'exp')
if cur[1] ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
if tonumber(cur[2]) <= tonumber(ARGV[2]) then return 0 end
return 1
"""
