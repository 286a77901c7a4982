-- Give up the leadership, only if this exact leadership still holds the lock.
-- KEYS[1] leader lock
-- ARGV[1] the lock value this holder got
-- Returns 1 when released, 0 otherwise.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
