"""The commit's Lua: `COMMIT_SCRIPT`, which writes a batch's outputs and state changes with its
acks for the entries the consumer still owns, and `FENCE_LUA`, the fence every taking script
increments (`commit.Committer` builds the script's arguments and judges its replies).
"""

from __future__ import annotations

__all__ = ["COMMIT_SCRIPT", "FENCE_LUA", "FENCE_TTL_MS"]

#: A fence hash lives this long after the last time something was taken: a consumer frozen for
#: longer than that, whose entries were taken, would trust a batch it no longer owns.
FENCE_TTL_MS = 7 * 24 * 3600 * 1000

# Lua: fence(consumer) marks `consumer` of KEYS[2] as robbed; used by every taking script (and by
# the admin actions that take pending entries).
FENCE_LUA = f"""
local function fence(victim)
  redis.call('HINCRBY', KEYS[2], victim, 1)
  redis.call('PEXPIRE', KEYS[2], {FENCE_TTL_MS})
end
"""

# KEYS: stream, fence hash, then the keys the operations write.
# ARGV: group, consumer, tag (the fence counter the batch was read under; '' = unknown), flags
# ('w': the operations belong to the whole batch, written only if every entry is still owned;
# 'm': merged, the operations of several entries folded into fewer, owner 0: written only if
# every entry is still owned and every check holds, else nothing is written and the owned
# entries are handled again; 'r': a re-sent commit, check each entry against the PEL whatever
# the fence says; 'c': the operations include checks, read before anything is written), kinds
# (of each key from KEYS[3] on, one letter: x stream, z sorted set, h hash), margin (other
# entries the consumer may own, for the PEL read), n, the n done ids; then per operation: owner
# (1..n, or 0 for the whole batch), code, width w, then w arguments, the first a KEYS index.
# Codes: X XADDs to one stream (owner 0; maxlen: > 0 approximate, < 0 exact, 0 none; f, the
# field arguments of each entry; m, how many; then m times: its owner, its f fields; each is
# written or dropped by its own owner, as an operation), z ZADD (score, member),
# h HSET (field, value), H HDEL (field), s storage set (field, value, ttl ms or ''), k storage
# set keeping the key's TTL (field, value), i storage incr (field, by; the stored value must be an
# integer, else the entry is handled again), d storage delete (field), c check (field, present
# '0'/'1', value): the owner and every later entry are handled again when the stored value
# differs (optimistic concurrency), - nothing (a write a later one of the batch overwrites).
# A key of the wrong type fails the commit before any write.
# Reply: the number acked (the fast path: everything written), or {acked, fence counter, again,
# kind, dropped}: `again` the ids to handle again, kind 1 (a check failed, or a merged commit
# had entries taken: handle them again as they are) or 2 (a whole batch not all owned: its owned
# entries are retried), dropped = the operations of entries another consumer took, not written.
COMMIT_SCRIPT = """
local stream, fence, group, consumer = KEYS[1], KEYS[2], ARGV[1], ARGV[2]
local flags, n = ARGV[4], tonumber(ARGV[7])
local whole = string.find(flags, 'w', 1, true) ~= nil
local merged = string.find(flags, 'm', 1, true) ~= nil
local checks = string.find(flags, 'c', 1, true) ~= nil
local argc = #ARGV
local first = 8 + n
local epoch = redis.call('HGET', fence, consumer) or '0'
local owned = nil
if string.find(flags, 'r', 1, true) or epoch ~= ARGV[3] then
  owned = {}
  local pel = redis.call('XPENDING', stream, group, '-', '+', n + tonumber(ARGV[6]), consumer)
  for _, e in ipairs(pel) do owned[e[1]] = true end
end
local function mine(o)
  return owned == nil or owned[ARGV[7 + o]] == true
end
if (whole or merged) and owned ~= nil then
  local kept = {}
  for o = 1, n do if mine(o) then kept[#kept + 1] = ARGV[7 + o] end end
  if #kept < n then
    local lost, j = 0, first
    while j <= argc do
      local c = ARGV[j + 1]
      if c == 'X' then lost = lost + tonumber(ARGV[j + 6]) elseif c ~= 'c' then lost = lost + 1 end
      j = j + 3 + tonumber(ARGV[j + 2])
    end
    if merged then return {0, epoch, kept, 1, lost} end
    return {0, epoch, kept, 2, lost}
  end
end
-- A key of another type would fail the script halfway: refuse before writing anything.
local kinds, names = ARGV[5], {x = 'stream', z = 'zset', h = 'hash'}
for j = 3, #KEYS do
  local want, has = names[string.sub(kinds, j - 2, j - 2)], redis.call('TYPE', KEYS[j]).ok
  if has ~= 'none' and has ~= want then
    return redis.error_reply('WRONGTYPE ' .. KEYS[j] .. ' is a ' .. has .. ', not a ' .. want)
  end
end
local function stored(k, f)
  local v = redis.call('HGET', k, f)
  if not v then v = redis.call('GET', k .. ':ttl:' .. f) end
  return v
end
local cut = n + 1
local i = first
while checks and i <= argc do
  local o, code, w = tonumber(ARGV[i]), ARGV[i + 1], tonumber(ARGV[i + 2])
  if (code == 'c' or code == 'i') and (o == 0 or (o < cut and mine(o))) then
    local v = stored(KEYS[tonumber(ARGV[i + 3])], ARGV[i + 4])
    local same
    if code == 'i' then
      same = (not v) or (string.match(v, '^%-?%d+$') ~= nil)
    elseif ARGV[i + 5] == '1' then
      same = (v == ARGV[i + 6])
    else
      same = (not v)
    end
    if not same then
      if o == 0 then cut = 1 else cut = o end
    end
  end
  i = i + 3 + w
end
local dropped = 0
local all = owned == nil and cut > n
i = first
while i <= argc do
  local o, code, w = tonumber(ARGV[i]), ARGV[i + 1], tonumber(ARGV[i + 2])
  if code == 'X' then
    local k, maxlen, fw = KEYS[tonumber(ARGV[i + 3])], tonumber(ARGV[i + 4]), tonumber(ARGV[i + 5])
    local p, last = i + 7, i + 2 + w
    while p <= last do
      local q = tonumber(ARGV[p])
      if all or (q == 0 and cut > n) or (q > 0 and q < cut and mine(q)) then
        if maxlen > 0 then
          redis.call('XADD', k, 'MAXLEN', '~', maxlen, '*', unpack(ARGV, p + 1, p + fw))
        elseif maxlen < 0 then
          redis.call('XADD', k, 'MAXLEN', -maxlen, '*', unpack(ARGV, p + 1, p + fw))
        else
          redis.call('XADD', k, '*', unpack(ARGV, p + 1, p + fw))
        end
      elseif q > 0 and not mine(q) then
        dropped = dropped + 1
      end
      p = p + 1 + fw
    end
  elseif (all or (o == 0 and cut > n) or (o > 0 and o < cut and mine(o))) and code ~= 'c' then
    local k = KEYS[tonumber(ARGV[i + 3])]
    if code == 'z' then
      redis.call('ZADD', k, ARGV[i + 4], ARGV[i + 5])
    elseif code == 'h' then
      redis.call('HSET', k, ARGV[i + 4], ARGV[i + 5])
    elseif code == 'H' then
      redis.call('HDEL', k, ARGV[i + 4])
    elseif code == 's' then
      local f = ARGV[i + 4]
      if ARGV[i + 6] == '' then
        redis.call('HSET', k, f, ARGV[i + 5])
        redis.call('DEL', k .. ':ttl:' .. f)
      else
        redis.call('SET', k .. ':ttl:' .. f, ARGV[i + 5], 'PX', ARGV[i + 6])
        redis.call('HDEL', k, f)
      end
    elseif code == 'i' then
      local f = ARGV[i + 4]
      if redis.call('EXISTS', k .. ':ttl:' .. f) == 1 then
        redis.call('INCRBY', k .. ':ttl:' .. f, ARGV[i + 5])
      else
        redis.call('HINCRBY', k, f, ARGV[i + 5])
      end
    elseif code == 'k' then
      local f = ARGV[i + 4]
      if redis.call('EXISTS', k .. ':ttl:' .. f) == 1 then
        redis.call('SET', k .. ':ttl:' .. f, ARGV[i + 5], 'KEEPTTL')
      else
        redis.call('HSET', k, f, ARGV[i + 5])
      end
    elseif code == 'd' then
      redis.call('HDEL', k, ARGV[i + 4])
      redis.call('DEL', k .. ':ttl:' .. ARGV[i + 4])
    end
  elseif code ~= 'c' and o > 0 and not mine(o) then
    dropped = dropped + 1
  end
  i = i + 3 + w
end
local acks = {}
for o = 1, math.min(n, cut - 1) do
  if mine(o) then acks[#acks + 1] = ARGV[7 + o] end
end
local acked = 0
for c = 1, #acks, 1000 do
  acked = acked + redis.call('XACK', stream, group, unpack(acks, c, math.min(c + 999, #acks)))
end
if owned == nil and cut > n then return acked end
local again = {}
if cut <= n then
  for o = cut, n do if mine(o) then again[#again + 1] = ARGV[7 + o] end end
end
return {acked, epoch, again, 1, dropped}
"""
