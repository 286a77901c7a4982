-- @include lib.lua
-- Move a worker to a new state if it is in one of the expected states (and, when given,
-- still in the expected session), and announce it.
-- KEYS[1] worker hash
-- ARGV[1] context (lib.lua)   ARGV[2] worker id   ARGV[3] new state
-- ARGV[4] expected states, comma-separated ('' = any)   ARGV[5] session id ('' = any)
-- ARGV[6] now ms
-- Returns the previous state when moved (or already there), false otherwise.
local h = redis.call('HMGET', KEYS[1], 'state', 'session_id', 'slots_used')
if not h[1] then return false end
if ARGV[5] ~= '' and h[2] ~= ARGV[5] then return false end
if ARGV[4] ~= '' and not string.find(',' .. ARGV[4] .. ',', ',' .. h[1] .. ',', 1, true) then
  return false
end
local new = ARGV[3]
-- "Available" and "Running" are one state with or without jobs.
if new == 'available' and tonumber(h[3]) > 0 then new = 'running' end
if new == h[1] then return h[1] end
redis.call('HSET', KEYS[1], 'state', new)
if new == 'unhealthy' then
  redis.call('HSET', KEYS[1], 'unhealthy_since', ARGV[6])
  redis.call('HINCRBY', KEYS[1], 'unhealthy_count', 1)
elseif new == 'available' or new == 'running' then
  redis.call('HSET', KEYS[1], 'unhealthy_since', '')
end
event('type', 'worker', 'worker', ARGV[2], 'state', new, 'previous', h[1])
wake('type', 'worker', 'worker', ARGV[2])
return h[1]
