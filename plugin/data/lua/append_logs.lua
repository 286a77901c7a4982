-- @include lib.lua
-- Append a batch of log lines of an attempt, if the attempt is the worker's, within the
-- invocation's log budget: the last N lines are kept, and once the bytes logged reach
-- the budget one truncation marker is appended and later lines are dropped. Followers of
-- the logs wake on the 'log' event.
-- KEYS[1] invocation hash   KEYS[2] log list
-- ARGV[1] context (lib.lua)   ARGV[2] invocation id   ARGV[3] attempt   ARGV[4] worker id
-- ARGV[5] lines kept   ARGV[6] log byte budget (0 = none)   ARGV[7] the truncation marker
-- ARGV[8..] JSON lines
-- Returns {'ok', appended}, {'truncated', appended} (the budget ran out: the rest of the
-- logs is dropped), or {'not_held'}.
local h = redis.call('HMGET', KEYS[1], 'status', 'worker_id', 'attempt', 'log_bytes',
  'log_truncated')
if h[1] ~= 'running' or h[2] ~= ARGV[4] or h[3] ~= ARGV[3] then return {'not_held'} end
if h[5] == '1' then return {'truncated', 0} end
local budget = tonumber(ARGV[6])
local used = tonumber(h[4]) or 0
local appended = 0
local truncated = false
for i = 8, #ARGV do
  if budget > 0 and used + #ARGV[i] > budget then
    truncated = true
    break
  end
  redis.call('RPUSH', KEYS[2], ARGV[i])
  used = used + #ARGV[i]
  appended = appended + 1
end
if truncated then
  redis.call('RPUSH', KEYS[2], ARGV[7])
  redis.call('HSET', KEYS[1], 'log_truncated', '1')
end
redis.call('HSET', KEYS[1], 'log_bytes', used)
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[5]), -1)
event('type', 'log', 'invocation', ARGV[2], 'worker', ARGV[4], 'lines', appended)
if truncated then return {'truncated', appended} end
return {'ok', appended}
