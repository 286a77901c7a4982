-- @include lib.lua
-- Register (or re-register) a worker: new session, capacity, labels; keep the reservations
-- of jobs it still runs, and sort out what it reports against what the server leases to it.
-- KEYS[1] worker hash   KEYS[2] worker jobs (hash: id -> reservation)   KEYS[3] workers (set)
-- KEYS[4] heartbeats (zset)
-- ARGV[1] context (lib.lua)   ARGV[2] worker id   ARGV[3] now ms   ARGV[4] number of field
-- pairs N, then N field, value pairs, then the ids of the jobs the agent still runs
-- Returns {orphans, revoked}: jobs leased to it that it no longer has, and jobs it reports
-- that are not (or no longer) leased to it.
local worker, now = ARGV[2], ARGV[3]
local n = tonumber(ARGV[4])
local fields = {}
for i = 5, 4 + 2 * n do fields[#fields + 1] = ARGV[i] end
local reported = {}
for i = 5 + 2 * n, #ARGV do reported[ARGV[i]] = true end
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'cpu_used', 0, 'mem_used', 0, 'gpu_used', 0, 'slots_used', 0,
    'registered_at', now, 'unhealthy_count', 0)
end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('HSET', KEYS[1], 'state', 'registering', 'last_heartbeat', now, 'unhealthy_since', '',
  'pools', '')
redis.call('SADD', KEYS[3], worker)
redis.call('ZADD', KEYS[4], now, worker)
local orphans, revoked = {}, {}
for _, id in ipairs(redis.call('HKEYS', KEYS[2])) do
  if not reported[id] then orphans[#orphans + 1] = id end
end
for id in pairs(reported) do
  if redis.call('HEXISTS', KEYS[2], id) == 0 then revoked[#revoked + 1] = id end
end
event('type', 'worker', 'worker', worker, 'state', 'registering')
wake('type', 'worker', 'worker', worker)
return {orphans, revoked}
