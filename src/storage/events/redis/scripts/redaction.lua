-- Shared by redact.lua and scrub_feed.lua (prepended to each with
-- `concat!`): what a redacted entry looks like, and the rewrite of a
-- stream's tail that frees the nodes holding erased bodies.

-- Whether an entry's fields are already redacted (no `b`, `redacted` in `x`).
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

-- An entry's fields without `b` and with `redacted` in its `x` content.
local function redacted_fields(fields)
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
  return kept
end

-- Deletes `entries` (the stream's whole tail, in order) and adds them again
-- under the same ids, each one `erase(id, fields)` names redacted. A bare
-- XDEL only flags an entry inside its node; emptying the nodes frees them.
-- `below` is an id under the first entry and at or above every id before it.
local function rewrite_tail(stream, entries, below, erase)
  for i = 1, #entries, 1000 do
    local ids = {}
    for j = i, math.min(i + 999, #entries) do
      ids[#ids + 1] = entries[j][1]
    end
    redis.call('XDEL', stream, unpack(ids))
  end
  -- Back below the deleted ids, so that they can be added again (Redis 7
  -- also keeps the highest deleted id, which must not be above it).
  local r = redis.pcall('XSETID', stream, below, 'MAXDELETEDID', '0-0')
  if type(r) == 'table' and r.err then
    redis.call('XSETID', stream, below)
  end
  for _, e in ipairs(entries) do
    local id, fields = e[1], e[2]
    if erase(id, fields) then
      fields = redacted_fields(fields)
    end
    redis.call('XADD', stream, id, unpack(fields))
  end
end

