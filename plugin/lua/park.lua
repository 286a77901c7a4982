-- Park a queued invocation that no worker of the current fleet can ever take (a label or
-- runtime nobody offers, larger than every worker, no schedulable worker): it leaves the
-- ready queue, so the scheduler stops looking at it, until the fleet changes.
-- KEYS[1] invocation hash   KEYS[2] queue   KEYS[3] parked (zset, same scores as the queue)
-- ARGV[1] invocation id     ARGV[2] pending reason
-- Returns 1 when parked, 0 when it was no longer queued.
local score = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not score or redis.call('HGET', KEYS[1], 'status') ~= 'queued' then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[3], score, ARGV[1])
redis.call('HSET', KEYS[1], 'pending_reason', ARGV[2])
return 1
