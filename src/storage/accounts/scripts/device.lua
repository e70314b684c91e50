-- A login's device and (if any) its new device proof, in the user's slot.
-- KEYS[1] parlor:user:{NAME}:devices  hash device_id -> device JSON
-- KEYS[2] parlor:user:{NAME}:proofs   zset proof hash (hex) -> created ms
-- ARGV[1] device_id, ARGV[2] device JSON, ARGV[3] proof hash hex or '',
-- ARGV[4] now (ms), ARGV[5] proofs to keep (the newest; older ones go)
-- Answer: 1.
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if ARGV[3] ~= '' then
  redis.call('ZADD', KEYS[2], ARGV[4], ARGV[3])
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -(tonumber(ARGV[5]) + 1))
end
return 1
