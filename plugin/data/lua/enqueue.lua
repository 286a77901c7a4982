-- @include lib.lua
-- Record an invocation and put it in line, in one step, within the limits: the queue's
-- length and byte budget (ready, parked and delayed work all count), the function's
-- concurrency, and at most once per idempotency key (scoped to the caller).
-- KEYS[1] the function's current-revision key (when ARGV[8] names a revision, a one-off
--   job's: the job is refused if this exists)
-- KEYS[2] the new invocation's hash   KEYS[3] the idempotency key (ignored when ARGV[9] is 0)
-- ARGV[1] context (lib.lua)   ARGV[2] invocation id   ARGV[3] function name   ARGV[4] now ms
-- ARGV[5] payload             ARGV[6] priority ('' = the function's)
-- ARGV[7] traceparent         ARGV[8] a one-off job's revision ('' = an invocation of the
--   function: its current revision)
-- ARGV[9] idempotency ttl s (0 = no key)   ARGV[10] payload digest (idempotency)
-- ARGV[11] max queue (0 = unbounded)       ARGV[12] max queued payload bytes (0 = unbounded)
-- ARGV[13] ageing ms (one priority level is worth this much waiting)
-- ARGV[14] callback url ('' = none)   ARGV[15] the gateway waiting for the answer ('' = none)
-- Returns {'ok', id}; {'duplicate', earlier id}; {'idempotency_mismatch', earlier id} (the
-- key was used with another payload); {'queue_full'}; {'queue_bytes_full'};
-- {'concurrency'}; {'exists'} (the id is taken); {'no_function'}; {'name_taken'} (a job
-- named like a registered function).
local id, fn, now = ARGV[2], ARGV[3], tonumber(ARGV[4])
local payload = ARGV[5]
if ARGV[8] ~= '' and redis.call('EXISTS', KEYS[1]) == 1 then
  -- A job under a registered function's name would share its concurrency, its history
  -- and its warm instances (checked before the idempotency key: a function's key must
  -- not answer for a job either).
  return {'name_taken'}
end
local idem_ttl = tonumber(ARGV[9])
if idem_ttl > 0 then
  local earlier = redis.call('GET', KEYS[3])
  if earlier then
    local cut = string.find(earlier, ':', 1, true)
    local earlier_id = string.sub(earlier, 1, cut - 1)
    if string.sub(earlier, cut + 1) ~= ARGV[10] then return {'idempotency_mismatch', earlier_id} end
    return {'duplicate', earlier_id}
  end
end
local rev = ARGV[8]
if rev == '' then
  rev = redis.call('GET', KEYS[1])
  if not rev then return {'no_function'} end
end
local spec = redis.call('HMGET', C.rev .. fn .. ':' .. rev, 'priority', 'concurrency', 'qt',
  'max_retries')
if not spec[1] then return {'no_function'} end
local verdict = admit(fn, tonumber(spec[2]), #payload, tonumber(ARGV[11]), tonumber(ARGV[12]))
if verdict ~= 'ok' then return {verdict} end
if redis.call('EXISTS', KEYS[2]) == 1 then return {'exists'} end
create(id, fn, rev, spec, ARGV[6], payload, now, tonumber(ARGV[13]), ARGV[7], ARGV[14],
  ARGV[15])
if idem_ttl > 0 then redis.call('SET', KEYS[3], id .. ':' .. ARGV[10], 'EX', idem_ttl) end
return {'ok', id}
