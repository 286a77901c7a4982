-- Lease a queued invocation to a worker: check the leader's fencing token, the invocation's
-- state and the worker's free capacity, then reserve, lease and mark running, in one step.
-- KEYS[1] invocation hash   KEYS[2] queue        KEYS[3] leases (zset by deadline)
-- KEYS[4] worker hash       KEYS[5] worker jobs  KEYS[6] events stream   KEYS[7] leader lock
-- KEYS[8] parked (zset): a pinned assignment may take a parked invocation
-- ARGV[1] invocation id     ARGV[2] worker id    ARGV[3] fencing value ('' = not checked)
-- ARGV[4] now ms            ARGV[5] lease ttl ms ARGV[6] events maxlen
-- Returns {1, attempt, payload, traceparent, function, runtime, image, command json, env json,
-- network, timeout_s, cpu, mem, gpu} or {code, reason} with code <= 0:
--   -1 not leader, -2 not queued, -3 worker not schedulable, -4 does not fit.
if ARGV[3] ~= '' and redis.call('GET', KEYS[7]) ~= ARGV[3] then
  return {-1, 'not_leader'}
end
local inv = redis.call('HMGET', KEYS[1], 'status', 'attempt', 'cpu', 'mem', 'gpu', 'payload',
  'traceparent', 'function', 'runtime', 'image', 'command', 'env', 'network', 'timeout_s')
local waiting_in = KEYS[2]
if not redis.call('ZSCORE', KEYS[2], ARGV[1]) then waiting_in = KEYS[8] end
if inv[1] ~= 'queued' or not redis.call('ZSCORE', waiting_in, ARGV[1]) then
  return {-2, 'not_queued'}
end
local w = redis.call('HMGET', KEYS[4], 'state', 'cpu_total', 'cpu_used', 'mem_total', 'mem_used',
  'gpu_total', 'gpu_used', 'slots_total', 'slots_used')
if w[1] ~= 'available' and w[1] ~= 'running' then
  return {-3, 'worker_not_schedulable'}
end
local cpu, mem, gpu = tonumber(inv[3]), tonumber(inv[4]), tonumber(inv[5])
if tonumber(w[2]) - tonumber(w[3]) < cpu or tonumber(w[4]) - tonumber(w[5]) < mem
  or tonumber(w[6]) - tonumber(w[7]) < gpu or tonumber(w[8]) - tonumber(w[9]) < 1 then
  return {-4, 'does_not_fit'}
end
redis.call('ZREM', waiting_in, ARGV[1])
redis.call('HINCRBY', KEYS[4], 'cpu_used', cpu)
redis.call('HINCRBY', KEYS[4], 'mem_used', mem)
redis.call('HINCRBY', KEYS[4], 'gpu_used', gpu)
redis.call('HINCRBY', KEYS[4], 'slots_used', 1)
redis.call('HSET', KEYS[4], 'state', 'running')
redis.call('SADD', KEYS[5], ARGV[1])
redis.call('ZADD', KEYS[3], tonumber(ARGV[4]) + tonumber(ARGV[5]), ARGV[1])
redis.call('HSET', KEYS[1], 'status', 'running', 'worker_id', ARGV[2], 'started_at', ARGV[4],
  'pending_reason', '')
redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[6], '*', 'type', 'assigned',
  'invocation', ARGV[1], 'worker', ARGV[2], 'attempt', inv[2])
return {1, tonumber(inv[2]), inv[6] or '', inv[7] or '', inv[8], inv[9], inv[10], inv[11],
  inv[12], inv[13], inv[14], cpu, mem, gpu}
