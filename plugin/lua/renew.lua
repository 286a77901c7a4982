-- A heartbeat: record the worker's liveness and usage, and extend the leases of the jobs it
-- still runs, each only when it is still leased to this worker at that attempt. A worker
-- that was Unhealthy and beats again on its current session is healthy again (the seed's
-- "Unhealthy -> Available").
-- KEYS[1] worker hash   KEYS[2] heartbeats (zset)   KEYS[3] leases   KEYS[4] events stream
-- KEYS[5..] the invocation hash of each running job, in the order of the ARGV pairs
-- ARGV[1] worker id     ARGV[2] session id   ARGV[3] now ms   ARGV[4] lease ttl ms
-- ARGV[5] cpu %         ARGV[6] memory %     ARGV[7] events maxlen
-- ARGV[8] runtimes on offer, comma-separated ('-' = unchanged)
-- ARGV[9..] invocation id, attempt pairs
-- Returns {status, revoked id...}; status is 'ok', 'unknown' (no such worker) or 'stale'
-- (another session registered since, or the worker was declared Failed or Terminated); the
-- revoked jobs are no longer this worker's.
local w = redis.call('HMGET', KEYS[1], 'session_id', 'state', 'slots_used', 'runtimes')
if not w[1] then return {'unknown'} end
if w[1] ~= ARGV[2] then return {'stale'} end
if w[2] == 'failed' or w[2] == 'terminated' then return {'stale'} end
local now = tonumber(ARGV[3])
redis.call('HSET', KEYS[1], 'last_heartbeat', now, 'cpu_percent', ARGV[5], 'mem_percent', ARGV[6])
redis.call('ZADD', KEYS[2], now, ARGV[1])
if w[2] == 'unhealthy' then
  local state = 'available'
  if tonumber(w[3]) > 0 then state = 'running' end
  redis.call('HSET', KEYS[1], 'state', state, 'unhealthy_since', '')
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[7], '*', 'type', 'worker', 'worker', ARGV[1],
    'state', state, 'previous', 'unhealthy')
end
if ARGV[8] ~= '-' and ARGV[8] ~= w[4] then
  -- A runtime came or went (a Docker engine stopped answering): the scheduler must see it.
  redis.call('HSET', KEYS[1], 'runtimes', ARGV[8])
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[7], '*', 'type', 'worker', 'worker', ARGV[1],
    'runtimes', ARGV[8])
end
local result = {'ok'}
local k = 5
for i = 9, #ARGV, 2 do
  local id, attempt = ARGV[i], ARGV[i + 1]
  local h = redis.call('HMGET', KEYS[k], 'status', 'worker_id', 'attempt')
  if h[1] == 'running' and h[2] == ARGV[1] and h[3] == attempt
    and redis.call('ZSCORE', KEYS[3], id) then
    redis.call('ZADD', KEYS[3], 'XX', now + tonumber(ARGV[4]), id)
  else
    result[#result + 1] = id
  end
  k = k + 1
end
return result
