-- End one attempt of a running invocation: fence on attempt and worker, free the worker's
-- reservation and the lease, then retry it (backoff), requeue it (handed back) or record
-- the final state (dead-lettered when it failed) and announce the completion.
-- KEYS[1] invocation hash   KEYS[2] leases     KEYS[3] worker hash   KEYS[4] worker jobs
-- KEYS[5] delayed (zset)    KEYS[6] queue      KEYS[7] dead (zset)   KEYS[8] events stream
-- KEYS[9] in-flight counts (hash)   KEYS[10] callbacks due (zset)   KEYS[11] log list
-- ARGV[1] invocation id     ARGV[2] attempt    ARGV[3] worker id
-- ARGV[4] outcome: succeeded | failed | timed_out | cancelled | handed_back | lease_expired |
--   lost (the worker re-registered without it)
-- ARGV[5] exit code ('' = none)   ARGV[6] error   ARGV[7] output   ARGV[8] output truncated (0/1)
-- ARGV[9] started ms (agent clock, '' = keep)   ARGV[10] finished ms
-- ARGV[11] retry backoff as "base_ms:cap_ms:jitter" (jitter in [0, 1) drawn by the caller)
-- ARGV[12] events maxlen          ARGV[13] completion channel
-- ARGV[14] retention s: a final record and its logs expire after it (0 = kept forever)
-- ARGV[15] '1' when the agent says retrying cannot help (a failure is then final)
-- Returns {1, final status, function} recorded, {2, 'retry'|'requeued', function} back in
-- line, {0, reason} stale.
local id = ARGV[1]
local h = redis.call('HMGET', KEYS[1], 'status', 'attempt', 'worker_id', 'cpu', 'mem', 'gpu',
  'failures', 'max_retries', 'cancel_requested', 'started_at', 'score', 'function', 'callback_url')
if not h[1] then return {0, 'unknown'} end
if h[1] ~= 'running' then return {0, 'not_running'} end
if h[2] ~= ARGV[2] or h[3] ~= ARGV[3] then return {0, 'stale_attempt'} end
local outcome = ARGV[4]
local now = tonumber(ARGV[10])
if outcome == 'lease_expired' then
  local deadline = redis.call('ZSCORE', KEYS[2], id)
  if deadline and tonumber(deadline) > now then return {0, 'lease_renewed'} end
end

redis.call('ZREM', KEYS[2], id)
if redis.call('SREM', KEYS[4], id) == 1 then
  redis.call('HINCRBY', KEYS[3], 'cpu_used', 0 - tonumber(h[4]))
  redis.call('HINCRBY', KEYS[3], 'mem_used', 0 - tonumber(h[5]))
  redis.call('HINCRBY', KEYS[3], 'gpu_used', 0 - tonumber(h[6]))
  local slots = redis.call('HINCRBY', KEYS[3], 'slots_used', -1)
  if slots <= 0 and redis.call('HGET', KEYS[3], 'state') == 'running' then
    redis.call('HSET', KEYS[3], 'state', 'available')
  end
end

local cancelled = h[9] == '1'
if cancelled and outcome ~= 'succeeded' then outcome = 'cancelled' end
local attempt = tonumber(h[2])
local failures = tonumber(h[7])
local failed = outcome == 'failed' or outcome == 'lease_expired' or outcome == 'lost'
if failed then failures = failures + 1 end

local retryable = failed and ARGV[15] ~= '1' and failures <= tonumber(h[8])
if outcome == 'handed_back' or retryable then
  local fields = {'status', 'queued', 'attempt', attempt + 1, 'failures', failures,
    'worker_id', '', 'started_at', ''}
  local kind
  if outcome == 'handed_back' then
    kind = 'requeued'
    redis.call('ZADD', KEYS[6], h[11], id)
    fields[#fields + 1] = 'pending_reason'; fields[#fields + 1] = ''
    fields[#fields + 1] = 'queued_at'; fields[#fields + 1] = now
  else
    kind = 'retry'
    -- Exponential backoff with jitter: uniform in [ceiling/2, ceiling].
    local base, cap, jitter = string.match(ARGV[11], '([^:]+):([^:]+):([^:]+)')
    local ceiling = math.min(tonumber(cap), tonumber(base) * 2 ^ (failures - 1))
    redis.call('ZADD', KEYS[5], now + math.floor(ceiling / 2 + tonumber(jitter) * ceiling / 2), id)
    fields[#fields + 1] = 'pending_reason'; fields[#fields + 1] = 'retry backoff after ' .. outcome
    fields[#fields + 1] = 'error'; fields[#fields + 1] = ARGV[6]
    fields[#fields + 1] = 'exit_code'; fields[#fields + 1] = ARGV[5]
  end
  redis.call('HSET', KEYS[1], unpack(fields))
  redis.call('XADD', KEYS[8], 'MAXLEN', '~', ARGV[12], '*', 'type', kind, 'invocation', id,
    'worker', ARGV[3], 'attempt', attempt, 'outcome', outcome)
  return {2, kind, h[12]}
end

local status = outcome
if outcome == 'lease_expired' or outcome == 'lost' then status = 'failed' end
local started = ARGV[9]
if started == '' then started = h[10] end
local duration = now - tonumber(started)
if duration < 0 then duration = 0 end
redis.call('HSET', KEYS[1], 'status', status, 'failures', failures, 'exit_code', ARGV[5],
  'error', ARGV[6], 'result', ARGV[7], 'result_truncated', ARGV[8], 'started_at', started,
  'finished_at', now, 'duration_ms', duration, 'pending_reason', '')
if status == 'failed' or status == 'timed_out' then
  redis.call('ZADD', KEYS[7], now, id)
end
redis.call('HINCRBY', KEYS[9], h[12], -1)
if h[13] and h[13] ~= '' then redis.call('ZADD', KEYS[10], now, id) end
redis.call('XADD', KEYS[8], 'MAXLEN', '~', ARGV[12], '*', 'type', 'finished', 'invocation', id,
  'worker', ARGV[3], 'attempt', attempt, 'status', status)
if tonumber(ARGV[14]) > 0 then
  redis.call('EXPIRE', KEYS[1], ARGV[14])
  redis.call('EXPIRE', KEYS[11], ARGV[14])
end
redis.call('PUBLISH', ARGV[13], id)
return {1, status, h[12]}
