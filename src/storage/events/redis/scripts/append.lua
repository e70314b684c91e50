-- Appends one event (after epoch.lua). Atomic: the room stream, the
-- counter, the transaction record and the feed entry are all written, or
-- none is.
--
-- KEYS: meta, log, feed, txn (the meta key again when there is no txn;
-- the meta key as the feed on a Redis Cluster, whose feed is in another
-- slot and written by the caller).
-- ARGV: room, known epoch, known generation, known seq, candidate epoch,
-- retention (0: all), feed maxlen, fingerprint ('' = no txn), txn ttl
-- (seconds), origin, ts, then the event's field/value pairs.
-- Answer: {status, epoch, generation, seq}, status one of stored, repeated,
-- conflict.

local room, known_epoch, candidate = ARGV[1], ARGV[2], ARGV[5]
local known_gen, known_seq = tonumber(ARGV[3]), tonumber(ARGV[4])
local retention, feed_max = tonumber(ARGV[6]), ARGV[7]
local fp, ttl, origin = ARGV[8], ARGV[9], ARGV[10]
local fields = {}
for i = 12, #ARGV do
  fields[#fields + 1] = ARGV[i]
end
fields[#fields + 1] = 'ts'
fields[#fields + 1] = ARGV[11]

local epoch, gen, seq = ensure(KEYS[1], KEYS[2], known_epoch, known_gen, known_seq, candidate)
if fp ~= '' then
  local rec = redis.call('GET', KEYS[4])
  if rec then
    local rfp, repoch, rseq = string.match(rec, '^(%x+) (%S+) (%d+)$')
    if repoch == epoch then
      if rfp == fp then
        return {'repeated', epoch, gen, tonumber(rseq)}
      end
      return {'conflict', epoch, gen, 0}
    end
  end
end

-- Exact MAXLEN, not '~': retention means the last N events on both logs,
-- and trimming the one entry an append pushes out is cheap.
local function add(s)
  local id = string.format('%d-0', s)
  if retention > 0 then
    return redis.pcall('XADD', KEYS[2], 'MAXLEN', retention, id, unpack(fields))
  end
  return redis.pcall('XADD', KEYS[2], id, unpack(fields))
end

-- The room stream is written first: if it refuses, nothing else is written.
seq = seq + 1
local r = add(seq)
if type(r) == 'table' and r.err then
  if not string.find(r.err, 'equal or smaller', 1, true) then
    return r
  end
  -- The stream already holds ids past the counter: it is not the log
  -- clients saw under this counter. Archive it and start a new epoch.
  epoch, gen, seq = restart(KEYS[1], KEYS[2], candidate, known_epoch, known_gen, epoch, gen)
  seq = 1
  r = add(seq)
  if type(r) == 'table' and r.err then
    return r
  end
end
local sseq, sgen = string.format('%d', seq), string.format('%d', gen)
redis.call('HSET', KEYS[1], 'seq', sseq)
if fp ~= '' then
  redis.call('SET', KEYS[4], fp .. ' ' .. epoch .. ' ' .. sseq, 'EX', ttl)
end
if KEYS[3] ~= KEYS[1] then
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', feed_max, '*',
    'r', room, 'e', epoch, 'g', sgen, 'q', sseq, 'o', origin, unpack(fields))
end
return {'stored', epoch, gen, seq}
