-- Append a batch of log lines of an attempt, if the attempt is the worker's; keep the last N,
-- and announce the batch on the event stream (followers of the logs wake on it).
-- KEYS[1] invocation hash   KEYS[2] log list   KEYS[3] events stream
-- ARGV[1] attempt   ARGV[2] worker id   ARGV[3] lines kept   ARGV[4] events maxlen
-- ARGV[5..] JSON lines
-- Returns the number of lines appended (0 when the worker does not hold that attempt).
local h = redis.call('HMGET', KEYS[1], 'status', 'worker_id', 'attempt')
if h[1] ~= 'running' or h[2] ~= ARGV[2] or h[3] ~= ARGV[1] then return 0 end
for i = 5, #ARGV do redis.call('RPUSH', KEYS[2], ARGV[i]) end
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[3]), -1)
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], '*', 'type', 'log',
  'invocation', redis.call('HGET', KEYS[1], 'id'), 'worker', ARGV[2], 'lines', #ARGV - 4)
return #ARGV - 4
