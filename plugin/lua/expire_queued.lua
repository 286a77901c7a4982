-- Fail a queued invocation whose queue timeout has passed (it never found a worker).
-- KEYS[1] invocation hash   KEYS[2] queue   KEYS[3] dead (zset)   KEYS[4] events stream
-- KEYS[5] in-flight counts (hash)   KEYS[6] callbacks due (zset)   KEYS[7] parked (zset)
-- KEYS[8] log list
-- ARGV[1] invocation id     ARGV[2] now ms  ARGV[3] events maxlen ARGV[4] completion channel
-- ARGV[5] retention s: the final record and its logs expire after it (0 = kept forever)
-- Returns 1 when it was failed, 0 when it was no longer queued or not yet due.
local h = redis.call('HMGET', KEYS[1], 'status', 'queue_deadline', 'pending_reason', 'attempt',
  'function', 'callback_url')
if h[1] ~= 'queued' or tonumber(h[2]) > tonumber(ARGV[2]) then return 0 end
if redis.call('ZREM', KEYS[2], ARGV[1]) + redis.call('ZREM', KEYS[7], ARGV[1]) == 0 then
  return 0
end
local reason = 'queue_timeout'
if h[3] and h[3] ~= '' then reason = 'queue_timeout: ' .. h[3] end
redis.call('HSET', KEYS[1], 'status', 'failed', 'error', reason, 'finished_at', ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[3], '*', 'type', 'finished', 'invocation', ARGV[1],
  'attempt', h[4], 'status', 'failed')
redis.call('HINCRBY', KEYS[5], h[5], -1)
if h[6] and h[6] ~= '' then redis.call('ZADD', KEYS[6], ARGV[2], ARGV[1]) end
if tonumber(ARGV[5]) > 0 then
  redis.call('EXPIRE', KEYS[1], ARGV[5])
  redis.call('EXPIRE', KEYS[8], ARGV[5])
end
redis.call('PUBLISH', ARGV[4], ARGV[1])
return 1
