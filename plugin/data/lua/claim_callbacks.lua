-- Claim callbacks that are due: each claimed one is pushed out by the claim's duration (a
-- lease), so another gateway takes it over only if this one dies while delivering.
-- KEYS[1] callbacks due (zset)
-- ARGV[1] now ms   ARGV[2] claim duration ms   ARGV[3] at most this many
-- Returns the claimed invocation ids.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(due) do
  redis.call('ZADD', KEYS[1], tonumber(ARGV[1]) + tonumber(ARGV[2]), id)
end
return due
