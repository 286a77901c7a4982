-- @include lib.lua
-- Reclaim the attempts whose lease ran out (their worker is gone or silent): each ends as
-- 'lease_expired', a failure (lib.lua: end_attempt), so it runs again or fails for good.
-- ARGV[1] context (lib.lua)   ARGV[2] now ms   ARGV[3] at most this many
-- ARGV[4] backoff delays (ms, comma-separated, one per failure count)
-- Returns a flat list of id, outcome ('retry' | 'recorded'), status, function, revision per
-- reclaimed attempt (status is '' for a retry).
local now = tonumber(ARGV[2])
local due = redis.call('ZRANGEBYSCORE', C.leases, '-inf', now, 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for _, id in ipairs(due) do
  local h = redis.call('HMGET', C.inv .. id, 'worker_id', 'attempt')
  if not h[1] or h[1] == '' then
    redis.call('ZREM', C.leases, id)
  else
    local r = end_attempt(id, h[2], h[1], 'lease_expired', now,
      {'', 'lease_expired: the worker stopped renewing it', '', '0', '', '0', ARGV[4], '', ''})
    if r[1] == 'recorded' then
      for _, v in ipairs({id, 'recorded', r[2], r[3], r[4]}) do out[#out + 1] = v end
    elseif r[1] ~= 'stale' then
      for _, v in ipairs({id, r[1], '', r[2], r[3]}) do out[#out + 1] = v end
    end
  end
end
return out
