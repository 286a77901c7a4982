-- Record an invocation and put it on the ready queue, in one step.
-- KEYS[1] invocation hash    KEYS[2] queue (zset)    KEYS[3] invocation index (zset)
-- KEYS[4] events stream     KEYS[5] sequence counter (orders enqueues within one millisecond)
-- ARGV[1] invocation id      ARGV[2] queue position in ms (priority offset included)
-- ARGV[3] max queue length (0 = unbounded)
-- ARGV[4] created_at ms      ARGV[5] events maxlen   ARGV[6..] field, value pairs of the record
-- Returns 1 when enqueued, 0 when the queue is full, -1 when the id already exists.
if tonumber(ARGV[3]) > 0 and redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[3]) then
  return 0
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  return -1
end
local record = {}
for i = 6, #ARGV do record[#record + 1] = ARGV[i] end
local seq = redis.call('INCR', KEYS[5]) % 1000
local score = tonumber(ARGV[2]) * 1000 + seq
record[#record + 1] = 'score'
record[#record + 1] = string.format('%d', score)
redis.call('HSET', KEYS[1], unpack(record))
redis.call('ZADD', KEYS[2], score, ARGV[1])
redis.call('ZADD', KEYS[3], tonumber(ARGV[4]) * 1000 + seq, ARGV[1])
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[5], '*', 'type', 'queued', 'invocation', ARGV[1])
return 1
