-- Cancel an invocation. A queued (or retry-waiting) one is finished as cancelled right here;
-- a running one is flagged, and the caller tells its worker to kill it.
-- KEYS[1] invocation hash   KEYS[2] queue   KEYS[3] delayed   KEYS[4] events stream
-- KEYS[5] in-flight counts (hash)   KEYS[6] callbacks due (zset)   KEYS[7] parked (zset)
-- KEYS[8] log list
-- ARGV[1] invocation id     ARGV[2] now ms  ARGV[3] events maxlen  ARGV[4] completion channel
-- ARGV[5] retention s: the final record and its logs expire after it (0 = kept forever)
-- Returns {1, 'cancelled'}, {2, worker id, attempt} when running, {0, status} when final,
-- {-1, 'unknown'} when there is no such invocation.
local h = redis.call('HMGET', KEYS[1], 'status', 'worker_id', 'attempt', 'function',
  'callback_url')
if not h[1] then return {-1, 'unknown'} end
if h[1] == 'running' then
  redis.call('HSET', KEYS[1], 'cancel_requested', '1')
  return {2, h[2], tonumber(h[3])}
end
if h[1] ~= 'queued' then return {0, h[1]} end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[7], ARGV[1])
redis.call('HSET', KEYS[1], 'status', 'cancelled', 'finished_at', ARGV[2], 'pending_reason', '',
  'cancel_requested', '1')
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[3], '*', 'type', 'finished', 'invocation', ARGV[1],
  'attempt', h[3], 'status', 'cancelled')
redis.call('HINCRBY', KEYS[5], h[4], -1)
if h[5] and h[5] ~= '' then redis.call('ZADD', KEYS[6], ARGV[2], ARGV[1]) end
if tonumber(ARGV[5]) > 0 then
  redis.call('EXPIRE', KEYS[1], ARGV[5])
  redis.call('EXPIRE', KEYS[8], ARGV[5])
end
redis.call('PUBLISH', ARGV[4], ARGV[1])
return {1, 'cancelled'}
