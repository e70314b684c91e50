-- Deletes a room's entries for some seqs of one epoch from the shared feed
-- (v1.1 redactions), scanning `count` entries from `after` on. The feed is
-- one key, so this touches one slot; the caller repeats it until the end.
-- The feed's newest entry is never deleted: a process whose reader waits
-- there takes the entry at its cursor vanishing for lost data (feed.rs);
-- the caller erases again once a later entry (the redaction) is in.
--
-- KEYS: feed. ARGV: room, epoch, after (an entry id, exclusive; '-' from
-- the start), count, then the seqs.
-- Answer: {the last entry id scanned ('' at the end of the feed), entries deleted}.

local room, epoch, after, count = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local seqs = {}
for i = 5, #ARGV do
  seqs[ARGV[i]] = true
end
local from = after
if after ~= '-' then
  from = '(' .. after
end
local entries = redis.call('XRANGE', KEYS[1], from, '+', 'COUNT', count)
local newest = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local tail = newest[1] and newest[1][1]
local hits = {}
for _, e in ipairs(entries) do
  local f = e[2]
  local r, ep, q
  -- The feed's own fields come first: r, e, g, q, o.
  for j = 1, math.min(#f, 10), 2 do
    if f[j] == 'r' then
      r = f[j + 1]
    elseif f[j] == 'e' then
      ep = f[j + 1]
    elseif f[j] == 'q' then
      q = f[j + 1]
    end
  end
  if r == room and ep == epoch and seqs[q] and e[1] ~= tail then
    hits[#hits + 1] = e[1]
  end
end
if #hits > 0 then
  redis.call('XDEL', KEYS[1], unpack(hits))
end
if #entries < count then
  return {'', #hits}
end
return {entries[#entries][1], #hits}
