-- @include lib.lua
-- Run a dead-lettered invocation again, as a new invocation with the same function
-- revision, payload, priority and callback, within the same limits as a new invoke.
-- KEYS[1] the dead invocation's hash   KEYS[2] the new invocation's hash
-- ARGV[1] context (lib.lua)   ARGV[2] dead invocation id   ARGV[3] new invocation id
-- ARGV[4] now ms   ARGV[5] max queue   ARGV[6] max queued payload bytes   ARGV[7] ageing ms
-- ARGV[8] how a one-off job's revision starts (domain.JOB_REVISION_PREFIX)
-- Returns {'ok', new id}; {'unknown'}; {'not_dead'}; {'gone'} (its revision or payload
-- expired); {'queue_full'}; {'queue_bytes_full'}; {'concurrency'}; {'exists'};
-- {'name_taken'} (a job whose name a function has taken since); {'no_function'} (its
-- function was deleted since: deleting a function stops its code from running).
local old, new, now = ARGV[2], ARGV[3], tonumber(ARGV[4])
local h = redis.call('HMGET', KEYS[1], 'status', 'function', 'revision', 'priority',
  'traceparent', 'callback_url')
if not h[1] then return {'unknown'} end
if not redis.call('ZSCORE', C.dead, old) then return {'not_dead'} end
local registered = redis.call('EXISTS', C.fn .. h[2]) == 1
if string.sub(h[3], 1, #ARGV[8]) == ARGV[8] then
  if registered then return {'name_taken'} end
elseif not registered then
  return {'no_function'}
end
local payload = redis.call('HGET', KEYS[1], 'payload')
local spec = redis.call('HMGET', C.rev .. h[2] .. ':' .. h[3], 'priority', 'concurrency', 'qt',
  'max_retries')
if not payload or not spec[1] then return {'gone'} end
local verdict = admit(h[2], tonumber(spec[2]), #payload, tonumber(ARGV[5]), tonumber(ARGV[6]))
if verdict ~= 'ok' then return {verdict} end
if redis.call('EXISTS', KEYS[2]) == 1 then return {'exists'} end
create(new, h[2], h[3], spec, priority_of(h[4]), payload, now, tonumber(ARGV[7]), h[5] or '',
  h[6] or '', '')
redis.call('ZREM', C.dead, old)
redis.call('HSET', KEYS[1], 'replayed_as', new)
return {'ok', new}
