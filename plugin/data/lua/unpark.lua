-- @include lib.lua
-- Give the parked invocations of one revision another look (the fleet changed in a way
-- that may let them run): back to the ready queue, in their original order.
-- ARGV[1] context (lib.lua)   ARGV[2] function   ARGV[3] revision   ARGV[4] at most this many
-- Returns the number moved (the caller repeats while it returns ARGV[4]).
local member = ARGV[2] .. ':' .. ARGV[3]
local parked = C.parked .. member
local moved = redis.call('ZRANGE', parked, 0, tonumber(ARGV[4]) - 1, 'WITHSCORES')
for i = 1, #moved, 2 do
  local id = moved[i]
  redis.call('ZADD', C.queue, moved[i + 1], id)
  redis.call('ZREM', parked, id)
  redis.call('HSET', C.inv .. id, 'parked', '')
end
if #moved > 0 then
  wake('type', 'unparked', 'function', ARGV[2], 'revision', ARGV[3])
end
if redis.call('EXISTS', parked) == 0 then redis.call('SREM', C.parked_revs, member) end
return #moved / 2
