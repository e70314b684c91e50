-- Erases a room's copies of some events of one epoch from a feed stream
-- (v1.1 redactions), scanning `count` entries from `after` on. The feed is
-- one key, so this touches one slot; the caller repeats it until the end.
--
-- As in redact.lua, a bare XDEL would only flag an entry as deleted: its
-- bytes would stay in the stream node, in memory and in every RDB or AOF
-- rewrite, until the feed's trim reaches the node. So each copy's node is
-- emptied and freed:
-- * a copy at most `rewrite_max` entries from the feed's end: the tail from
--   one stream node (`node` entries) before it is deleted and added again
--   with the same ids, the copy without its `b` field and with `redacted`
--   in its `x` content. Every id stays, the feed's last id too, so readers
--   (feed.rs) see the same entries in the same order, the erased one as its
--   redaction reads;
-- * a copy deeper than that: it is deleted and the feed is trimmed to
--   `node` entries past it, so its node goes with the older ones. Those
--   entries are `rewrite_max` appends old: a reader that far behind takes
--   the trim as it takes the feed's own trim (feed.rs checks the rooms'
--   marks).
--
-- KEYS: feed. ARGV: room, epoch, after (an entry id, exclusive; '-' from
-- the start), count, node, rewrite_max, then the seqs.
-- Answer: {the last entry id scanned ('' at the end of the feed), entries erased}.

local room, epoch, after = ARGV[1], ARGV[2], ARGV[3]
local count, node, rewrite_max = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local seqs = {}
for i = 7, #ARGV do
  seqs[ARGV[i]] = true
end

local function is_hit(f)
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
  return r == room and ep == epoch and seqs[q] ~= nil
end

local function last_generated_id()
  local info = redis.call('XINFO', 'STREAM', KEYS[1])
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then
      return info[i + 1]
    end
  end
end

local from = after
if after ~= '-' then
  from = '(' .. after
end
local entries = redis.call('XRANGE', KEYS[1], from, '+', 'COUNT', count)
local last = ''
if #entries == count then
  last = entries[#entries][1]
end
local hits = {}
for _, e in ipairs(entries) do
  if is_hit(e[2]) and not is_redacted(e[2]) then
    hits[#hits + 1] = e[1]
  end
end
if #hits == 0 then
  return {last, 0}
end

-- Deep copies go with a trim past the deepest of them.
local shallow = nil
local deep_until = nil
for _, id in ipairs(hits) do
  local upto = redis.call('XRANGE', KEYS[1], id, '+', 'COUNT', rewrite_max + 1)
  if #upto > rewrite_max then
    deep_until = upto[node + 1][1]
  elseif shallow == nil then
    shallow = id
  end
end
if deep_until ~= nil then
  redis.call('XDEL', KEYS[1], unpack(hits))
  redis.call('XTRIM', KEYS[1], 'MINID', deep_until)
end
if shallow == nil then
  return {last, #hits}
end

-- The tail from one node before the first shallow copy, rewritten.
local before = redis.call('XREVRANGE', KEYS[1], '(' .. shallow, '-', 'COUNT', node)
local start, prev = shallow, '0-0'
if #before > 0 then
  start = before[#before][1]
  local p = redis.call('XREVRANGE', KEYS[1], '(' .. start, '-', 'COUNT', 1)
  if p[1] then
    prev = p[1][1]
  end
end
local top = last_generated_id()
local tail = redis.call('XRANGE', KEYS[1], start, '+')
rewrite_tail(KEYS[1], tail, prev, function(_, f)
  return is_hit(f) and not is_redacted(f)
end)
-- The feed's last id as it was, so the next XADD * is above every id
-- a reader may have seen.
if top then
  redis.call('XSETID', KEYS[1], top)
end
return {last, #hits}
