-- @include lib.lua
-- A heartbeat: record the worker's liveness, usage, runtimes and instance pools, and
-- extend the leases of the jobs it still runs, each only when it is still leased to this
-- worker at that attempt. A worker that was Unhealthy and beats again on its current
-- session is healthy again (the seed's "Unhealthy -> Available").
-- KEYS[1] worker hash   KEYS[2] heartbeats (zset)
-- ARGV[1] context (lib.lua)   ARGV[2] worker id   ARGV[3] session id   ARGV[4] now ms
-- ARGV[5] lease ttl ms   ARGV[6] cpu %   ARGV[7] memory %
-- ARGV[8] runtimes on offer, comma-separated ('-' = unchanged)
-- ARGV[9] instance pools, JSON ('-' = unchanged)
-- ARGV[10..] invocation id, attempt pairs
-- Returns {status, revoked id...}; status is 'ok', 'unknown' (no such worker) or 'stale'
-- (another session registered since, or the worker was declared Failed or Terminated).
local worker, now = ARGV[2], tonumber(ARGV[4])
local w = redis.call('HMGET', KEYS[1], 'session_id', 'state', 'slots_used', 'runtimes', 'pools')
if not w[1] then return {'unknown'} end
if w[1] ~= ARGV[3] then return {'stale'} end
if w[2] == 'failed' or w[2] == 'terminated' then return {'stale'} end
redis.call('HSET', KEYS[1], 'last_heartbeat', int(now), 'cpu_percent', ARGV[6],
  'mem_percent', ARGV[7])
redis.call('ZADD', KEYS[2], now, worker)
if w[2] == 'unhealthy' then
  local state = 'available'
  if tonumber(w[3]) > 0 then state = 'running' end
  redis.call('HSET', KEYS[1], 'state', state, 'unhealthy_since', '')
  event('type', 'worker', 'worker', worker, 'state', state, 'previous', 'unhealthy')
  wake('type', 'worker', 'worker', worker)
end
if ARGV[8] ~= '-' and ARGV[8] ~= w[4] then
  -- A runtime came or went (a Docker engine stopped answering): the scheduler must see it.
  redis.call('HSET', KEYS[1], 'runtimes', ARGV[8])
  event('type', 'worker', 'worker', worker, 'runtimes', ARGV[8])
  wake('type', 'worker', 'worker', worker)
end
if ARGV[9] ~= '-' and ARGV[9] ~= (w[5] or '') then
  redis.call('HSET', KEYS[1], 'pools', ARGV[9])
  wake('type', 'pools', 'worker', worker)
end
local result = {'ok'}
for i = 10, #ARGV, 2 do
  local id, attempt = ARGV[i], ARGV[i + 1]
  local h = redis.call('HMGET', C.inv .. id, 'status', 'worker_id', 'attempt')
  if h[1] == 'running' and h[2] == worker and h[3] == attempt
    and redis.call('ZSCORE', C.leases, id) then
    redis.call('ZADD', C.leases, 'XX', now + tonumber(ARGV[5]), id)
  else
    result[#result + 1] = id
  end
end
return result
