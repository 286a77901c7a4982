-- @include lib.lua
-- End one attempt with what its agent reported (lib.lua: end_attempt).
-- ARGV[1] context (lib.lua)   ARGV[2] invocation id   ARGV[3] attempt   ARGV[4] worker id
-- ARGV[5] outcome: succeeded | failed | timed_out | cancelled | handed_back | lost (the
--   worker came back without it)
-- ARGV[6] exit code ('' = none)   ARGV[7] error   ARGV[8] output   ARGV[9] output truncated (0/1)
-- ARGV[10] started ms (agent clock, '' = keep)   ARGV[11] finished ms
-- ARGV[12] '1' when retrying cannot help   ARGV[13] backoff delays (ms, comma-separated,
--   one per failure count)   ARGV[14] cold start ('' | '0' | '1')   ARGV[15] init ms ('')
-- ARGV[16] '1' when the acceptance came with the end: announce the start first
-- Returns {'recorded', status, function, revision}, {'retry' | 'requeued', function,
-- revision} or {'stale', reason}.
return end_attempt(ARGV[2], ARGV[3], ARGV[4], ARGV[5], tonumber(ARGV[11]),
  {ARGV[6], ARGV[7], ARGV[8], ARGV[9], ARGV[10], ARGV[12], ARGV[13], ARGV[14], ARGV[15],
    ARGV[16]})
