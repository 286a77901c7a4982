-- @include lib.lua
-- Record why queued invocations wait (what /v1/queue and the record show), only on those
-- still queued (a cancel or an assignment may have come first).
-- ARGV[1] context (lib.lua)   ARGV[2..] invocation id, pending reason pairs
-- Returns the number noted.
local noted = 0
for i = 2, #ARGV, 2 do
  local key = C.inv .. ARGV[i]
  if redis.call('HGET', key, 'status') == 'queued' then
    redis.call('HSET', key, 'pending_reason', ARGV[i + 1])
    noted = noted + 1
  end
end
return noted
