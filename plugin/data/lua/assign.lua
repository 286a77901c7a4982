-- @include lib.lua
-- Lease a queued invocation to a worker: check the leader's fencing token, the
-- invocation's state and the worker's free capacity, then take it out of line, reserve,
-- lease and mark it running, in one step.
-- KEYS[1] invocation hash   KEYS[2] worker hash   KEYS[3] worker jobs (hash: id -> reservation)
-- ARGV[1] context (lib.lua)   ARGV[2] invocation id   ARGV[3] worker id
-- ARGV[4] fencing token ('' = not checked: an operator's pin, which may take a parked one)
-- ARGV[5] now ms   ARGV[6] lease ttl ms
-- Returns {'ok', attempt, payload, traceparent, function, revision, order, queued_at} or
-- {'not_leader'}, {'not_queued'}, {'not_schedulable'}, {'does_not_fit'}.
local id, worker, now = ARGV[2], ARGV[3], tonumber(ARGV[5])
if ARGV[4] ~= '' and redis.call('GET', C.leader) ~= ARGV[4] then return {'not_leader'} end
local inv = redis.call('HMGET', KEYS[1], 'status', 'attempt', 'function', 'revision', 'priority',
  'traceparent', 'order', 'queued_at', 'parked')
if inv[1] ~= 'queued' then return {'not_queued'} end
if inv[9] == '1' and ARGV[4] ~= '' then return {'not_queued'} end
if not redis.call('ZSCORE', C.queue, id) and inv[9] ~= '1' then return {'not_queued'} end
local w = redis.call('HMGET', KEYS[2], 'state', 'cpu_total', 'cpu_used', 'mem_total', 'mem_used',
  'gpu_total', 'gpu_used', 'slots_total', 'slots_used')
if w[1] ~= 'available' and w[1] ~= 'running' then return {'not_schedulable'} end
local d = redis.call('HMGET', C.rev .. inv[3] .. ':' .. inv[4], 'cpu', 'mem', 'gpu')
local cpu, mem, gpu = tonumber(d[1]), tonumber(d[2]), tonumber(d[3])
if tonumber(w[2]) - tonumber(w[3]) < cpu or tonumber(w[4]) - tonumber(w[5]) < mem
  or tonumber(w[6]) - tonumber(w[7]) < gpu or tonumber(w[8]) - tonumber(w[9]) < 1 then
  return {'does_not_fit'}
end
local bytes = redis.call('HSTRLEN', KEYS[1], 'payload')
if not leave_queue(id, inv[3], inv[4], priority_of(inv[5]), bytes) then
  return {'not_queued'}
end
redis.call('HINCRBY', KEYS[2], 'cpu_used', cpu)
redis.call('HINCRBY', KEYS[2], 'mem_used', mem)
redis.call('HINCRBY', KEYS[2], 'gpu_used', gpu)
redis.call('HINCRBY', KEYS[2], 'slots_used', 1)
redis.call('HSET', KEYS[2], 'state', 'running')
redis.call('HSET', KEYS[3], id, d[1] .. ' ' .. d[2] .. ' ' .. d[3])
redis.call('ZADD', C.leases, now + tonumber(ARGV[6]), id)
redis.call('HSET', KEYS[1], 'status', 'running', 'worker_id', worker, 'started_at', int(now),
  'pending_reason', '', 'parked', '')
event('type', 'assigned', 'invocation', id, 'worker', worker, 'attempt', inv[2])
return {'ok', tonumber(inv[2]), redis.call('HGET', KEYS[1], 'payload') or '', inv[6] or '',
  inv[3], inv[4], inv[7], inv[8] or ''}
