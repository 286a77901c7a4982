-- Take or keep the scheduler leadership. The lock's value is "holder:epoch"; the epoch is
-- incremented on every new leadership, and is the fencing token scheduling writes check.
-- KEYS[1] leader lock   KEYS[2] epoch counter
-- ARGV[1] holder id     ARGV[2] ttl ms
-- Returns the lock value when this holder leads, false otherwise.
local current = redis.call('GET', KEYS[1])
if not current then
  local epoch = redis.call('INCR', KEYS[2])
  local value = ARGV[1] .. ':' .. epoch
  redis.call('SET', KEYS[1], value, 'PX', ARGV[2])
  return value
end
if string.sub(current, 1, #ARGV[1] + 1) == ARGV[1] .. ':' then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return current
end
return false
