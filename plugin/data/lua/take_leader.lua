-- Take the scheduler leadership that Consul's lock granted: Consul decides who leads, Redis
-- keeps the fencing token that scheduling writes check. A new leadership always gets a new
-- epoch, so whoever held the token before is fenced off at once.
-- KEYS[1] leader lock   KEYS[2] epoch counter
-- ARGV[1] holder id     ARGV[2] ttl ms
-- Returns the lock value ("holder:epoch").
local current = redis.call('GET', KEYS[1])
if current and string.sub(current, 1, #ARGV[1] + 1) == ARGV[1] .. ':' then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return current
end
local value = ARGV[1] .. ':' .. redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], value, 'PX', ARGV[2])
return value
