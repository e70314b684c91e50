-- Erases the bodies of events of one epoch of a room (v1.1 redactions).
-- Stream entries cannot be changed in place, so the stream's tail is
-- rewritten: every entry from `start` on is deleted and added again with
-- the same id, the redacted ones without their `b` field and with
-- `redacted` in their `x` content. `start` lies at least one stream node
-- (`stream-node-max-entries`, given by the caller) before the first erased
-- entry, so that every node holding an erased entry is emptied and freed,
-- not kept with the entry only flagged as deleted (see ARCHITECTURE.md).
--
-- KEYS: meta, log. ARGV: epoch (the current one or an archived one), node
-- entries (0: unknown, rewrite the whole stream), then the seqs to erase.
-- Answer: the number of entries that changed.

local prefix = string.sub(KEYS[1], 1, -5) -- 'parlor:{ROOM}:meta' without 'meta'
local epoch, node = ARGV[1], tonumber(ARGV[2])
local stream
if redis.call('HGET', KEYS[1], 'epoch') == epoch then
  stream = KEYS[2]
elseif redis.call('HEXISTS', prefix .. 'epochs', epoch) == 1 then
  stream = prefix .. 'archive:' .. epoch
else
  return 0
end

-- The seqs still to erase (present, not yet redacted), and the lowest.
local todo, lowest, n = {}, nil, 0
for i = 3, #ARGV do
  local id = string.format('%d-0', tonumber(ARGV[i]))
  local e = redis.call('XRANGE', stream, id, id)
  if e[1] and not todo[id] and not is_redacted(e[1][2]) then
    todo[id] = true
    n = n + 1
    local s = tonumber(ARGV[i])
    if lowest == nil or s < lowest then
      lowest = s
    end
  end
end
if n == 0 then
  return 0
end

local start = 1
if node > 0 then
  start = math.max(1, lowest - node + 1)
end
local entries = redis.call('XRANGE', stream, string.format('%d-0', start), '+')
rewrite_tail(stream, entries, string.format('%d-1', start - 1), function(id)
  return todo[id]
end)
return n
