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

local function is_redacted(fields)
  for j = 1, #fields, 2 do
    if fields[j] == 'b' then
      return false
    end
    if fields[j] == 'x' then
      local ok, x = pcall(cjson.decode, fields[j + 1])
      if ok and type(x) == 'table' and x['redacted'] == true then
        return true
      end
    end
  end
  return false
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
for i = 1, #entries, 1000 do
  local ids = {}
  for j = i, math.min(i + 999, #entries) do
    ids[#ids + 1] = entries[j][1]
  end
  redis.call('XDEL', stream, unpack(ids))
end
-- Back below the deleted ids, so that they can be added again (Redis 7
-- also keeps the highest deleted id, which must not be above it).
local below = string.format('%d-1', start - 1)
local r = redis.pcall('XSETID', stream, below, 'MAXDELETEDID', '0-0')
if type(r) == 'table' and r.err then
  redis.call('XSETID', stream, below)
end
for _, e in ipairs(entries) do
  local id, fields = e[1], e[2]
  if todo[id] then
    local kept, x = {}, nil
    for j = 1, #fields, 2 do
      if fields[j] == 'x' then
        local ok, t = pcall(cjson.decode, fields[j + 1])
        if ok and type(t) == 'table' then
          x = t
        end
      elseif fields[j] ~= 'b' then
        kept[#kept + 1] = fields[j]
        kept[#kept + 1] = fields[j + 1]
      end
    end
    x = x or {}
    x['redacted'] = true
    kept[#kept + 1] = 'x'
    kept[#kept + 1] = cjson.encode(x)
    fields = kept
  end
  redis.call('XADD', stream, id, unpack(fields))
end
return n
