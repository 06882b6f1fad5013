-- KEYS: app keys.
-- ARGV: the time a quiet run starts at; then per key '1' (quiet: start the count unless it
--   runs) or '0' (firing: stop it).
-- Start or stop each deployment's quiet count. Joined at load time after prologue.lua.
-- Answers per key what HSETNX or HDEL answered.
local out = {}
for i = 1, nk do
  if A[ao + 1 + i] == '1' then
    out[i] = redis.call('HSETNX', K[ko + i], 'quiet_since', A[ao + 1])
  else
    out[i] = redis.call('HDEL', K[ko + i], 'quiet_since')
  end
end
return out
