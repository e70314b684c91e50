-- Epoch bookkeeping, shared by append.lua and read.lua (prepended to each).
--
-- KEYS[1] is the room's meta hash `parlor:{ROOM}:meta`, KEYS[2] its log
-- stream. The room's other keys are built here from their common prefix
-- `parlor:{ROOM}:`, so they share the `{ROOM}` hash tag (and slot):
-- `archive:<epoch>` (an older epoch's stream) and `epochs` (a hash of the
-- archived epochs: `<epoch>` -> `<generation> <last seq>`).

local function clock_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function room_prefix(meta)
  return string.sub(meta, 1, -5) -- 'parlor:{ROOM}:meta' without 'meta'
end

-- The seq of a stream's last entry (0 when it is empty or missing).
local function last_seq(key)
  local e = redis.call('XREVRANGE', key, '+', '-', 'COUNT', 1)
  if e[1] then
    return tonumber(string.match(e[1][1], '^(%d+)'))
  end
  return 0
end

-- Keeps what an epoch's stream still holds when the room starts a new
-- epoch: the stream is renamed to the epoch's archive key (constant time,
-- however long it is) and listed in the room's epochs hash, where reads
-- with an epoch selector find it. Nothing Redis still holds is deleted.
local function archive(prefix, log, epoch, gen)
  if redis.call('EXISTS', log) == 0 then
    return
  end
  local key = prefix .. 'archive:' .. epoch
  -- The same epoch archived before and then brought back by a restore:
  -- both copies hold the same events as far as each goes (a seq is never
  -- reused under one epoch), so the one that goes further is kept.
  if redis.call('EXISTS', key) == 1 and last_seq(key) >= last_seq(log) then
    redis.call('DEL', log)
    return
  end
  redis.call('RENAME', log, key)
  redis.call('HSET', prefix .. 'epochs', epoch, string.format('%d %d', gen, last_seq(key)))
end

-- Starts a new epoch. The old epoch's stream is archived: its ids would
-- collide with the new seqs, and clients must not mistake its events for
-- the new epoch's. The generation only grows, so an older copy of the room
-- (a restore) is never taken for the newer one.
local function restart(meta, log, candidate, known_epoch, known_gen, old_epoch, old_gen)
  local now = clock_ms()
  local gen = math.max(now, known_gen + 1, old_gen + 1)
  local owner = old_epoch
  if not owner then
    -- The meta hash is gone but the stream may not be (a key deleted by
    -- hand): its events are of the epoch this process last saw, if any.
    if known_epoch ~= '' then
      owner = known_epoch
    else
      owner = 'unknown-' .. string.format('%d', now)
    end
  end
  archive(room_prefix(meta), log, owner, old_gen)
  redis.call('HSET', meta, 'epoch', candidate, 'gen', string.format('%d', gen), 'seq', '0')
  return candidate, gen, 0
end

-- The room's epoch, generation and last seq, after starting a new epoch if
-- the stored one cannot be continued: it is missing (data lost), older than
-- one the caller has seen, or its counter is behind what the caller has
-- seen of the same generation (a failover or a restore lost the last writes).
local function ensure(meta, log, known_epoch, known_gen, known_seq, candidate)
  local m = redis.call('HMGET', meta, 'epoch', 'gen', 'seq')
  local epoch = m[1]
  local gen = tonumber(m[2]) or 0
  local seq = tonumber(m[3]) or 0
  if (not epoch) or (known_epoch ~= '' and (gen < known_gen or (gen == known_gen and seq < known_seq))) then
    return restart(meta, log, candidate, known_epoch, known_gen, epoch, gen)
  end
  return epoch, gen, seq
end
