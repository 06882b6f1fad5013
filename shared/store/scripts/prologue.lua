#!lua flags=allow-cross-slot-keys
-- The start of every script the runner sends (shared/store/runner.py), joined in front of it at
-- load time (shared/store/lua.py); the constants a script names follow it, then its own text.
-- KEYS: a call routed by its keys (all of one slot) declares them.
-- ARGV: a call to one cluster node over several of its slots declares none: its keys come first
--   in ARGV after their count, then the script's own arguments. Redis 7.0 refuses declared keys
--   of several slots (CROSSSLOT) even with allow-cross-slot-keys, which only lets a script reach
--   undeclared keys of any slot its node serves.
-- After it, K[ko + i] is the i-th key, nk their count, and A[ao + j] the j-th other argument.
local K, A, ko, ao, nk = KEYS, ARGV, 0, 0, #KEYS
if nk == 0 and #ARGV > 0 then
  nk = tonumber(ARGV[1])
  K, ko, ao = ARGV, 1, nk + 1
end
