-- Record an invocation and put it on the ready queue, in one step, within the limits: the
-- bounded queue, the function's concurrency, and at most once per idempotency key.
-- KEYS[1] invocation hash   KEYS[2] queue (zset)   KEYS[3] invocation index (zset)
-- KEYS[4] events stream     KEYS[5] sequence counter (orders enqueues within one millisecond)
-- KEYS[6] in-flight counts (hash: function -> queued + running)
-- KEYS[7] idempotency key (string, ignored when ARGV[8] is 0)
-- ARGV[1] invocation id     ARGV[2] queue position in ms (priority offset included)
-- ARGV[3] max queue length (0 = unbounded)   ARGV[4] created_at ms   ARGV[5] events maxlen
-- ARGV[6] function name     ARGV[7] function concurrency (0 = unlimited)
-- ARGV[8] idempotency key ttl s (0 = no key)   ARGV[9..] field, value pairs of the record
-- Returns {1, id} enqueued, {2, id} the idempotency key's earlier invocation, {0} queue full,
-- {-1} the id exists, {-2} the function is at its concurrency limit.
local ttl = tonumber(ARGV[8])
if ttl > 0 then
  local earlier = redis.call('GET', KEYS[7])
  if earlier then return {2, earlier} end
end
if tonumber(ARGV[3]) > 0 and redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[3]) then
  return {0}
end
local limit = tonumber(ARGV[7])
if limit > 0 and tonumber(redis.call('HGET', KEYS[6], ARGV[6]) or '0') >= limit then
  return {-2}
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  return {-1}
end
local record = {}
for i = 9, #ARGV do record[#record + 1] = ARGV[i] end
local seq = redis.call('INCR', KEYS[5]) % 1000
local score = tonumber(ARGV[2]) * 1000 + seq
record[#record + 1] = 'score'
record[#record + 1] = string.format('%d', score)
redis.call('HSET', KEYS[1], unpack(record))
redis.call('ZADD', KEYS[2], score, ARGV[1])
redis.call('ZADD', KEYS[3], tonumber(ARGV[4]) * 1000 + seq, ARGV[1])
redis.call('HINCRBY', KEYS[6], ARGV[6], 1)
if ttl > 0 then redis.call('SET', KEYS[7], ARGV[1], 'EX', ttl) end
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[5], '*', 'type', 'queued', 'invocation', ARGV[1])
return {1, ARGV[1]}
