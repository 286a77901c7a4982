-- lib.lua: what the scripts share. scripts.py puts this file in front of every script
-- whose first line is "-- @include lib.lua" (Redis scripts cannot call one another).
--
-- ARGV[1] of such a script is the context built once per client by keys.py
-- (Keys.context): the key names and prefixes of Keys.CONTEXT_FIELDS in that order, the
-- log-list and worker-jobs suffixes, then four limits: the event stream's maxlen, the
-- wake-up stream's maxlen, the retention in seconds (0 = final records are kept for
-- ever) and the revision ttl in seconds (0 = revisions never expire).
-- Hodei runs on one Redis (not a cluster): scripts address per-invocation and per-worker
-- keys through these prefixes.
local C = {}
do
  local names = {'inv', 'queue', 'parked', 'parked_revs', 'delayed', 'waiting', 'depth',
    'leases', 'dead', 'inflight', 'callbacks', 'events', 'wakeups', 'invs', 'fn_index',
    'indexed', 'st_index', 'rev', 'worker', 'inbox', 'completed', 'callback_channel',
    'leader', 'sequence', 'answers', 'fn', 'logs_suffix', 'jobs_suffix', 'events_maxlen',
    'wakeups_maxlen', 'retention', 'revision_ttl'}
  local i = 1
  for part in string.gmatch(ARGV[1], '[^\n]+') do
    C[names[i]] = part
    i = i + 1
  end
  C.retention = tonumber(C.retention)
  C.revision_ttl = tonumber(C.revision_ttl)
end

-- Integers as Redis stores them (a Lua number would print as 1.7e+15).
local function int(x)
  return string.format('%d', x)
end

local function event(...)
  redis.call('XADD', C.events, 'MAXLEN', '~', C.events_maxlen, '*', ...)
end

local function wake(...)
  redis.call('XADD', C.wakeups, 'MAXLEN', '~', C.wakeups_maxlen, '*', ...)
end

local PRIORITY_OFFSET = {high = -1, normal = 0, low = 1}

-- A queued record stores only what differs from its defaults (every byte of it is kept for
-- each queued invocation): these read them back.
local function priority_of(raw) return raw or 'normal' end
-- A normal invocation's position in line is its order of creation.
local function position_of(position, order) return position or order end

-- A revision lives as long as something may still need it (a queued or running
-- invocation, a record kept for its retention, a replay); the current revision of a
-- function has no expiry (TTL -1), and none is shortened. (EXPIRE's GT would say it in
-- one call, from Redis 7.0 on: 6.2 is supported.)
local function keep_revision(fn, rev)
  if C.revision_ttl > 0 then
    local key = C.rev .. fn .. ':' .. rev
    local left = redis.call('TTL', key)
    if left >= 0 and left < C.revision_ttl then
      redis.call('EXPIRE', key, C.revision_ttl)
    end
  end
end

-- Put an invocation (back) in line: on the ready queue at its position, or in the
-- delayed set until its retry is due; counted in the depth; its queue deadline indexed
-- (as deadline ms * 1000 + the position's sequence, so that scores are unique).
local function join_queue(id, fn, rev, priority, bytes, position, deadline, due)
  if due then
    redis.call('ZADD', C.delayed, due, id)
    wake('type', 'retry', 'due', int(due))
  else
    redis.call('ZADD', C.queue, position, id)
    wake('type', 'queued', 'invocation', id, 'function', fn, 'revision', rev)
  end
  redis.call('ZADD', C.waiting, int(deadline * 1000 + math.fmod(tonumber(position), 1000)), id)
  redis.call('HINCRBY', C.depth, priority, 1)
  redis.call('HINCRBY', C.depth, 'bytes', bytes)
end

-- Take an invocation out of line (assigned, cancelled, expired), from whichever of the
-- ready queue, the delayed set or its parked set holds it. False when none did.
local function leave_queue(id, fn, rev, priority, bytes)
  local removed = redis.call('ZREM', C.queue, id) + redis.call('ZREM', C.delayed, id)
  local parked = C.parked .. fn .. ':' .. rev
  if redis.call('ZREM', parked, id) == 1 then
    removed = removed + 1
    if redis.call('EXISTS', parked) == 0 then
      redis.call('SREM', C.parked_revs, fn .. ':' .. rev)
    end
  end
  if removed == 0 then return false end
  redis.call('ZREM', C.waiting, id)
  redis.call('HINCRBY', C.depth, priority, -1)
  redis.call('HINCRBY', C.depth, 'bytes', 0 - bytes)
  return true
end

-- Whether the queue and the function have room for one more invocation of ``bytes``:
-- 'ok', 'queue_full', 'queue_bytes_full' or 'concurrency'.
local function admit(fn, concurrency, bytes, max_queue, max_bytes)
  local d = redis.call('HMGET', C.depth, 'high', 'normal', 'low', 'bytes')
  if max_queue > 0 then
    local n = (tonumber(d[1]) or 0) + (tonumber(d[2]) or 0) + (tonumber(d[3]) or 0)
    if n >= max_queue then return 'queue_full' end
  end
  if max_bytes > 0 and (tonumber(d[4]) or 0) + bytes > max_bytes then
    return 'queue_bytes_full'
  end
  if concurrency > 0 and (tonumber(redis.call('HGET', C.inflight, fn)) or 0) >= concurrency then
    return 'concurrency'
  end
  return 'ok'
end

-- Record a new invocation and put it in line. ``spec`` is the revision's
-- {priority, concurrency, queue timeout ms, max retries}; ``priority`` '' = the spec's;
-- ``awaited`` names the gateway waiting for the answer, '' none (finalize publishes it).
local function create(id, fn, rev, spec, priority, payload, now, ageing_ms, traceparent,
    callback, awaited)
  if priority == '' then priority = spec[1] end
  local seq = redis.call('INCR', C.sequence) % 1000
  local order = now * 1000 + seq
  local position = (now + PRIORITY_OFFSET[priority] * ageing_ms) * 1000 + seq
  local qt = tonumber(spec[3])
  local key = C.inv .. id
  local fields = {'function', fn, 'revision', rev, 'status', 'queued', 'attempt', 1,
    'order', int(order), 'payload', payload}
  local function add(name, value)
    fields[#fields + 1] = name
    fields[#fields + 1] = value
  end
  if priority ~= 'normal' then
    add('priority', priority)
    add('position', int(position))
  end
  if traceparent ~= '' then add('traceparent', traceparent) end
  if callback ~= '' then add('callback_url', callback) end
  if awaited ~= '' then add('awaited', awaited) end
  redis.call('HSET', key, unpack(fields))
  redis.call('ZADD', C.invs, order, id)
  redis.call('ZADD', C.fn_index .. fn, order, id)
  redis.call('SADD', C.indexed, fn)
  redis.call('HINCRBY', C.inflight, fn, 1)
  keep_revision(fn, rev)
  join_queue(id, fn, rev, priority, #payload, position, now + qt, false)
  event('type', 'queued', 'invocation', id, 'function', fn)
end

-- A waited-on call's answer, to the gateway waiting on it (which need not read it back):
-- "id\n", then every field of the final record but the payload (never copied here), name
-- and value each as "<length>:<bytes>" (records.py reads it). An output above this
-- travels only by a read.
local ANSWER_MAX_OUTPUT = 65536
local function publish_answer(id, key, gateway)
  if redis.call('HSTRLEN', key, 'result') > ANSWER_MAX_OUTPUT then return end
  local names = {}
  for _, name in ipairs(redis.call('HKEYS', key)) do
    if name ~= 'payload' then names[#names + 1] = name end
  end
  local values = redis.call('HMGET', key, unpack(names))
  local parts = {id, '\n'}
  for i, name in ipairs(names) do
    local value = values[i] or ''
    parts[#parts + 1] = #name .. ':' .. name .. #value .. ':' .. value
  end
  redis.call('PUBLISH', C.answers .. gateway, table.concat(parts))
end

-- Record the final status of an invocation that has left the queue or its lease: its
-- fields, the status index, the dead letters (failed and timed out ones, whose payload
-- is kept for a replay; everyone else's is dropped), the function's in-flight count,
-- the callback, the retention, and the announcements (the answer first, for a waited-on
-- call: one connection hears both, in order).
local function finalize(id, status, fields, now, worker)
  local key = C.inv .. id
  local h = redis.call('HMGET', key, 'function', 'revision', 'callback_url', 'attempt', 'order',
    'awaited')
  redis.call('HSET', key, 'status', status, 'finished_at', int(now), 'pending_reason', '',
    'parked', '', unpack(fields))
  redis.call('ZADD', C.st_index .. status, h[5], id)
  if status == 'failed' or status == 'timed_out' then
    redis.call('ZADD', C.dead, now, id)
  else
    redis.call('HDEL', key, 'payload')
  end
  if redis.call('HINCRBY', C.inflight, h[1], -1) <= 0 then
    redis.call('HDEL', C.inflight, h[1])
  end
  if h[3] and h[3] ~= '' then
    redis.call('ZADD', C.callbacks, now, id)
    redis.call('PUBLISH', C.callback_channel, id)
  end
  if C.retention > 0 then
    redis.call('EXPIRE', key, C.retention)
    redis.call('EXPIRE', key .. C.logs_suffix, C.retention)
  end
  keep_revision(h[1], h[2])
  event('type', 'finished', 'invocation', id, 'worker', worker, 'attempt', h[4],
    'status', status)
  if h[6] then publish_answer(id, key, h[6]) end
  redis.call('PUBLISH', C.completed, id)
end

-- The backoff before retry number ``failures``: the caller draws the delays (one per
-- possible failure, comma-separated ms, hodei/backoff.py) so the formula lives in one
-- place; past the last, the last.
local function backoff(delays, failures)
  local last = 0
  local n = 0
  for d in string.gmatch(delays, '[^,]+') do
    n = n + 1
    last = tonumber(d)
    if n == failures then return last end
  end
  return last
end

-- End one attempt of a running invocation, fenced on attempt and worker: free the
-- worker's reservation and the lease, then requeue it (handed back: no failure counted),
-- retry it after a backoff, or record its final status.
-- r = {exit_code, error, output, truncated, started ('' = keep), final ('1': retrying
-- cannot help), delays, cold_start, init_ms, '1' to announce the start first (its
-- acceptance came with the end: accept.lua's event, once the attempt is known to be held)}
-- Returns {'recorded', status, function, revision}, {'retry' | 'requeued', function,
-- revision} or {'stale', reason}.
local function end_attempt(id, attempt, worker, outcome, now, r)
  local key = C.inv .. id
  local h = redis.call('HMGET', key, 'status', 'attempt', 'worker_id', 'failures', 'order',
    'cancel_requested', 'started_at', 'function', 'revision', 'priority', 'position')
  if not h[1] then return {'stale', 'unknown'} end
  if h[1] ~= 'running' then return {'stale', 'not_running'} end
  if h[2] ~= attempt or h[3] ~= worker then return {'stale', 'stale_attempt'} end
  if outcome == 'lease_expired' then
    local deadline = redis.call('ZSCORE', C.leases, id)
    if deadline and tonumber(deadline) > now then return {'stale', 'lease_renewed'} end
  end
  if r[10] == '1' then
    event('type', 'started', 'invocation', id, 'worker', worker, 'attempt', attempt)
  end
  local fn, rev = h[8], h[9]
  local limits = redis.call('HMGET', C.rev .. fn .. ':' .. rev, 'max_retries', 'qt')
  redis.call('ZREM', C.leases, id)
  local wkey = C.worker .. worker
  local held = redis.call('HGET', wkey .. C.jobs_suffix, id)
  if held then
    redis.call('HDEL', wkey .. C.jobs_suffix, id)
    local cpu, mem, gpu = string.match(held, '(%d+) (%d+) (%d+)')
    redis.call('HINCRBY', wkey, 'cpu_used', 0 - tonumber(cpu))
    redis.call('HINCRBY', wkey, 'mem_used', 0 - tonumber(mem))
    redis.call('HINCRBY', wkey, 'gpu_used', 0 - tonumber(gpu))
    local slots = redis.call('HINCRBY', wkey, 'slots_used', -1)
    if slots <= 0 and redis.call('HGET', wkey, 'state') == 'running' then
      redis.call('HSET', wkey, 'state', 'available')
    end
    wake('type', 'freed', 'worker', worker, 'cpu', cpu, 'mem', mem, 'gpu', gpu)
  end

  if h[6] == '1' and outcome ~= 'succeeded' then outcome = 'cancelled' end
  local failures = tonumber(h[4]) or 0
  local failed = outcome == 'failed' or outcome == 'lease_expired' or outcome == 'lost'
  if failed then failures = failures + 1 end
  local max_retries = tonumber(limits[1]) or 0
  if outcome == 'handed_back' or (failed and r[6] ~= '1' and failures <= max_retries) then
    local kind, due, reason = 'requeued', false, ''
    local fields = {'status', 'queued', 'attempt', tonumber(h[2]) + 1, 'failures', failures,
      'worker_id', '', 'started_at', '', 'queued_at', int(now)}
    if outcome ~= 'handed_back' then
      kind = 'retry'
      due = now + backoff(r[7], failures)
      reason = 'retry backoff after ' .. outcome
      fields[#fields + 1] = 'error'; fields[#fields + 1] = r[2]
      fields[#fields + 1] = 'exit_code'; fields[#fields + 1] = r[1]
    end
    fields[#fields + 1] = 'pending_reason'; fields[#fields + 1] = reason
    redis.call('HSET', key, unpack(fields))
    join_queue(id, fn, rev, priority_of(h[10]), redis.call('HSTRLEN', key, 'payload'),
      position_of(h[11], h[5]), (due or now) + (tonumber(limits[2]) or 0), due)
    event('type', kind, 'invocation', id, 'worker', worker, 'attempt', h[2], 'outcome', outcome)
    return {kind, fn, rev}
  end

  local status = outcome
  if outcome == 'lease_expired' or outcome == 'lost' then status = 'failed' end
  local started = r[5]
  if started == '' then started = h[7] end
  local duration = now - tonumber(started)
  if duration < 0 then duration = 0 end
  finalize(id, status, {'failures', failures, 'exit_code', r[1], 'error', r[2], 'result', r[3],
    'result_truncated', r[4], 'started_at', started, 'duration_ms', int(duration),
    'cold_start', r[8], 'init_ms', r[9]}, now, worker)
  return {'recorded', status, fn, rev}
end
