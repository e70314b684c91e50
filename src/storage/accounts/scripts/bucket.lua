-- One token-bucket check (or refund), on one key with a TTL.
-- KEYS[1] parlor:rl:<limit>:<key>  hash t (tokens), at (ms, Redis clock)
-- ARGV[1] burst, ARGV[2] ms per token, ARGV[3] 1 to take a token, -1 to give one back
-- Answer: 0 when taken (or given back), else the ms until a token is there.
-- The key expires once the bucket would be full again: a full bucket is the
-- same as none, so Redis holds only buckets somebody is draining.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local burst, every, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local v = redis.call('HMGET', KEYS[1], 't', 'at')
local tokens = burst
if v[1] then
  tokens = math.min(burst, tonumber(v[1]) + math.max(0, now - tonumber(v[2])) / every)
end
if cost < 0 then
  if not v[1] then return 0 end
  tokens = math.min(burst, tokens + 1)
elseif tokens >= 1 then
  tokens = tokens - 1
else
  return math.max(1, math.ceil((1 - tokens) * every))
end
redis.call('HSET', KEYS[1], 't', tostring(tokens), 'at', now)
redis.call('PEXPIRE', KEYS[1], math.max(1, math.ceil((burst - tokens) * every)))
return 0
