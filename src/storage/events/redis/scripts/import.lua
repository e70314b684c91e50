-- Writes events that a federated room's home server ordered (see
-- `EventLog::import`), keeping their epoch, seqs, ids and times. A replica
-- follows its home: when the home's epoch changes, or it restarts the log
-- at a later seq, what the replica held is dropped, as on the embedded log.
--
-- KEYS: meta, log, feed (the meta key on a Redis Cluster: no feed entry
-- here, the caller writes them). ARGV: room, epoch, restart seq ('' = none),
-- retention (0: all), feed maxlen, origin, count, then per event: seq,
-- event id, type, sender, has-body ('1'/'0'), body, ts, v1.1 content
-- ('' = none).
-- Answer: {generation, seq before, seq after, events written, hole (0/1)}.

local room, epoch, restart = ARGV[1], ARGV[2], ARGV[3]
local retention, feed_max, origin = tonumber(ARGV[4]), ARGV[5], ARGV[6]
local n = tonumber(ARGV[7])
local m = redis.call('HMGET', KEYS[1], 'epoch', 'gen', 'seq')
local gen, seq = tonumber(m[2]) or 0, tonumber(m[3]) or 0
if (not m[1]) or m[1] ~= epoch or restart ~= '' then
  local t = redis.call('TIME')
  gen = math.max(tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000), gen + 1)
  seq = 0
  if restart ~= '' then
    seq = tonumber(restart) - 1
  end
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'gen', string.format('%d', gen), 'seq', string.format('%d', seq))
end
local sgen = string.format('%d', gen)
local before = seq
local written, hole = 0, 0
local i = 8
for _ = 1, n do
  local eseq = tonumber(ARGV[i])
  if eseq > seq then
    if eseq ~= seq + 1 then
      hole = 1
      break
    end
    local fields = {'t', ARGV[i + 2], 's', ARGV[i + 3]}
    if ARGV[i + 4] == '1' then
      fields[#fields + 1] = 'b'
      fields[#fields + 1] = ARGV[i + 5]
    end
    fields[#fields + 1] = 'ts'
    fields[#fields + 1] = ARGV[i + 6]
    fields[#fields + 1] = 'i'
    fields[#fields + 1] = ARGV[i + 1]
    if ARGV[i + 7] ~= '' then
      fields[#fields + 1] = 'x'
      fields[#fields + 1] = ARGV[i + 7]
    end
    local id = string.format('%d-0', eseq)
    if retention > 0 then
      redis.call('XADD', KEYS[2], 'MAXLEN', retention, id, unpack(fields))
    else
      redis.call('XADD', KEYS[2], id, unpack(fields))
    end
    seq = eseq
    written = written + 1
    if KEYS[3] ~= KEYS[1] then
      redis.call('XADD', KEYS[3], 'MAXLEN', '~', feed_max, '*',
        'r', room, 'e', epoch, 'g', sgen, 'q', string.format('%d', seq), 'o', origin, unpack(fields))
    end
  end
  i = i + 8
end
redis.call('HSET', KEYS[1], 'seq', string.format('%d', seq))
return {gen, before, seq, written, hole}
