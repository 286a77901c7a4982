-- The fleet changed (a worker came, went, or changed): give parked invocations another look
-- by moving them back to the ready queue, in their original order.
-- KEYS[1] parked (zset)   KEYS[2] queue
-- ARGV[1] at most this many (the caller repeats while it returns that many)
-- Returns the number moved.
local moved = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1, 'WITHSCORES')
for i = 1, #moved, 2 do
  redis.call('ZADD', KEYS[2], moved[i + 1], moved[i])
  redis.call('ZREM', KEYS[1], moved[i])
end
return #moved / 2
