-- An agent accepted (started) an attempt: announce it, if the attempt is the worker's.
-- KEYS[1] invocation hash   KEYS[2] events stream
-- ARGV[1] invocation id     ARGV[2] attempt   ARGV[3] worker id   ARGV[4] events maxlen
-- Returns 1 when announced, 0 when the worker does not hold that attempt.
local h = redis.call('HMGET', KEYS[1], 'status', 'worker_id', 'attempt')
if h[1] ~= 'running' or h[2] ~= ARGV[3] or h[3] ~= ARGV[2] then return 0 end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'type', 'started',
  'invocation', ARGV[1], 'worker', ARGV[3], 'attempt', ARGV[2])
return 1
