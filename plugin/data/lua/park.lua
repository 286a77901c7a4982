-- @include lib.lua
-- Park queued invocations that no worker of the current fleet can ever take (a label or
-- runtime nobody offers, larger than every worker, no schedulable worker): they leave the
-- ready queue for their revision's parked set, so the scheduler stops looking at them,
-- until the fleet changes in a way that can help them (unpark.lua).
-- ARGV[1] context (lib.lua)   ARGV[2..] invocation id, pending reason pairs
-- Returns the number parked.
local parked = 0
for i = 2, #ARGV, 2 do
  local id = ARGV[i]
  local key = C.inv .. id
  local position = redis.call('ZSCORE', C.queue, id)
  local h = redis.call('HMGET', key, 'status', 'function', 'revision')
  if position and h[1] == 'queued' then
    redis.call('ZREM', C.queue, id)
    redis.call('ZADD', C.parked .. h[2] .. ':' .. h[3], position, id)
    redis.call('SADD', C.parked_revs, h[2] .. ':' .. h[3])
    redis.call('HSET', key, 'pending_reason', ARGV[i + 1], 'parked', '1')
    parked = parked + 1
  end
end
return parked
