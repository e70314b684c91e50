-- Reads a page of a room's log (after epoch.lua): of the current epoch, or
-- of an archived one when ARGV[8] names it.
--
-- KEYS: meta, log. ARGV: known epoch, known generation, known seq,
-- candidate epoch, mode (head|after|before|latest), n, limit, wanted epoch
-- ('' = the current one).
-- Answer: {status, epoch, generation, seq, earliest, entries} where status
-- is 'current' (the page is of the current epoch, which the other values
-- describe), 'archived' (epoch, generation and seq are the archived
-- epoch's) or 'unknown' (no such epoch; no entries).

local epoch, gen, seq = ensure(KEYS[1], KEYS[2], ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4])
local stream, status = KEYS[2], 'current'
local want = ARGV[8]
if want ~= '' and want ~= epoch then
  local prefix = room_prefix(KEYS[1])
  local a = redis.call('HGET', prefix .. 'epochs', want)
  if not a then
    return {'unknown', epoch, gen, seq, seq + 1, {}}
  end
  local g, l = string.match(a, '^(%d+) (%d+)$')
  stream, status, epoch, gen, seq = prefix .. 'archive:' .. want, 'archived', want, tonumber(g), tonumber(l)
end

local earliest = seq + 1
local first = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)
if first[1] then
  earliest = tonumber(string.match(first[1][1], '^(%d+)'))
end
local mode, n, limit = ARGV[5], ARGV[6], ARGV[7]
local entries = {}
if mode == 'after' then
  entries = redis.call('XRANGE', stream, '(' .. n .. '-0', '+', 'COUNT', limit)
elseif mode == 'before' then
  if n ~= '0' then
    entries = redis.call('XREVRANGE', stream, '(' .. n .. '-0', '-', 'COUNT', limit)
  end
elseif mode == 'latest' then
  entries = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', limit)
end
return {status, epoch, gen, seq, earliest, entries}
