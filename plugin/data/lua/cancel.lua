-- @include lib.lua
-- Cancel an invocation. A queued (or retry-waiting, or parked) one is finished as
-- cancelled right here; a running one is flagged, and its worker is told to kill it
-- through the inbox of the server its agent is connected to.
-- KEYS[1] invocation hash
-- ARGV[1] context (lib.lua)   ARGV[2] invocation id   ARGV[3] now ms   ARGV[4] reason
-- ARGV[5] inbox ttl s
-- Returns {'cancelled'}, {'running', worker id, attempt}, {'final', status} or {'unknown'}.
local id, now = ARGV[2], tonumber(ARGV[3])
local h = redis.call('HMGET', KEYS[1], 'status', 'worker_id', 'attempt', 'function', 'revision',
  'priority')
if not h[1] then return {'unknown'} end
if h[1] == 'running' then
  redis.call('HSET', KEYS[1], 'cancel_requested', '1')
  local server = redis.call('HGET', C.worker .. h[2], 'server_id')
  if server then
    local inbox = C.inbox .. server
    redis.call('RPUSH', inbox, 'C' .. h[2] .. '\0' .. id .. '\0' .. h[3] .. '\0' .. ARGV[4])
    redis.call('EXPIRE', inbox, tonumber(ARGV[5]))
  end
  return {'running', h[2], tonumber(h[3])}
end
if h[1] ~= 'queued' then return {'final', h[1]} end
leave_queue(id, h[4], h[5], priority_of(h[6]), redis.call('HSTRLEN', KEYS[1], 'payload'))
finalize(id, 'cancelled', {'cancel_requested', '1'}, now, '')
return {'cancelled'}
