-- @include lib.lua
-- Fail the queued invocations (ready, parked or waiting for a retry) whose queue
-- deadline has passed: they never found a worker in time. The one place queue timeouts
-- are enforced.
-- ARGV[1] context (lib.lua)   ARGV[2] now ms   ARGV[3] at most this many
-- Returns a flat list of id, function, revision per invocation failed.
local now = tonumber(ARGV[2])
local due = redis.call('ZRANGEBYSCORE', C.waiting, '-inf', int(now * 1000 + 999), 'LIMIT', 0,
  tonumber(ARGV[3]))
local out = {}
for _, id in ipairs(due) do
  local key = C.inv .. id
  local h = redis.call('HMGET', key, 'status', 'function', 'revision', 'priority',
    'pending_reason')
  local bytes = redis.call('HSTRLEN', key, 'payload')
  if h[1] == 'queued' and leave_queue(id, h[2], h[3], priority_of(h[4]), bytes) then
    local reason = 'queue_timeout'
    if h[5] and h[5] ~= '' then reason = 'queue_timeout: ' .. h[5] end
    finalize(id, 'failed', {'error', reason}, now, '')
    out[#out + 1] = id
    out[#out + 1] = h[2]
    out[#out + 1] = h[3]
  else
    redis.call('ZREM', C.waiting, id)
  end
end
return out
