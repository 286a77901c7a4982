-- @include lib.lua
-- An agent accepted (started) an attempt: announce it, if the attempt is the worker's.
-- KEYS[1] invocation hash
-- ARGV[1] context (lib.lua)   ARGV[2] invocation id   ARGV[3] attempt   ARGV[4] worker id
-- Returns 'ok', or 'not_held' when the worker does not hold that attempt.
local h = redis.call('HMGET', KEYS[1], 'status', 'worker_id', 'attempt')
if h[1] ~= 'running' or h[2] ~= ARGV[4] or h[3] ~= ARGV[3] then return 'not_held' end
event('type', 'started', 'invocation', ARGV[2], 'worker', ARGV[4], 'attempt', ARGV[3])
return 'ok'
