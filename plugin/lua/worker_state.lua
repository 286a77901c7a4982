-- Move a worker to a new state if it is in one of the expected states (and, when given, still
-- in the expected session), and announce it on the event stream.
-- KEYS[1] worker hash   KEYS[2] events stream
-- ARGV[1] worker id     ARGV[2] new state   ARGV[3] expected states, comma-separated ('' = any)
-- ARGV[4] session id ('' = any)   ARGV[5] now ms   ARGV[6] events maxlen
-- Returns the previous state when moved, false otherwise.
local h = redis.call('HMGET', KEYS[1], 'state', 'session_id', 'slots_used')
if not h[1] then return false end
if ARGV[4] ~= '' and h[2] ~= ARGV[4] then return false end
if ARGV[3] ~= '' and not string.find(',' .. ARGV[3] .. ',', ',' .. h[1] .. ',', 1, true) then
  return false
end
local new = ARGV[2]
-- "Available" and "Running" are one state with or without jobs.
if new == 'available' and tonumber(h[3]) > 0 then new = 'running' end
if new == h[1] then return h[1] end
redis.call('HSET', KEYS[1], 'state', new)
if new == 'unhealthy' then
  redis.call('HSET', KEYS[1], 'unhealthy_since', ARGV[5])
  redis.call('HINCRBY', KEYS[1], 'unhealthy_count', 1)
elseif new == 'available' or new == 'running' then
  redis.call('HSET', KEYS[1], 'unhealthy_since', '')
end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[6], '*', 'type', 'worker', 'worker', ARGV[1],
  'state', new, 'previous', h[1])
return h[1]
