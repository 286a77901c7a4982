-- @include lib.lua
-- Move retries whose backoff has elapsed from the delayed set back onto the ready queue,
-- at their original position (their place in line).
-- ARGV[1] context (lib.lua)   ARGV[2] now ms   ARGV[3] at most this many
-- Returns the number promoted.
local now = tonumber(ARGV[2])
local due = redis.call('ZRANGEBYSCORE', C.delayed, '-inf', now, 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(due) do
  redis.call('ZREM', C.delayed, id)
  local key = C.inv .. id
  local h = redis.call('HMGET', key, 'status', 'position', 'function', 'revision', 'order')
  if h[1] == 'queued' then
    redis.call('ZADD', C.queue, position_of(h[2], h[5]), id)
    redis.call('HSET', key, 'pending_reason', '', 'queued_at', int(now))
    wake('type', 'queued', 'invocation', id, 'function', h[3], 'revision', h[4])
    event('type', 'queued', 'invocation', id, 'function', h[3])
  end
end
return #due
