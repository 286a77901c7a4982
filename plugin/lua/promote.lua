-- Move retries whose backoff has elapsed from the delayed set back onto the ready queue,
-- keeping their original queue score (their place in line).
-- KEYS[1] delayed (zset)   KEYS[2] queue   KEYS[3] events stream
-- ARGV[1] now ms           ARGV[2] at most this many   ARGV[3] invocation key prefix
-- ARGV[4] events maxlen
-- Invocation hashes are addressed by prefix: Hodei runs on one Redis (not a cluster).
-- Returns the number promoted.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, id in ipairs(due) do
  redis.call('ZREM', KEYS[1], id)
  local inv = ARGV[3] .. id
  local h = redis.call('HMGET', inv, 'status', 'score')
  if h[1] == 'queued' then
    redis.call('ZADD', KEYS[2], h[2], id)
    redis.call('HSET', inv, 'pending_reason', '', 'queued_at', ARGV[1])
    redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], '*', 'type', 'queued', 'invocation', id)
  end
end
return #due
