-- KEYS: the episode and applied keys.
-- ARGV: the episode id the agent names, the decision, its until (Unix seconds, '' for none), the
--   note, now, the block after `applied` in ms (0: none), the episode's lifetime.
-- The agent's decision about an open episode, atomic with the claims of its slot. Joined at load
-- time after prologue.lua.
-- Answers {0} when that episode is not the open one; else {1}. `applied` ends the episode; the
-- others are kept with it.
local episode, applied = K[ko + 1], K[ko + 2]
local episode_id, decision, until_, note, now = A[ao + 1], A[ao + 2], A[ao + 3], A[ao + 4], A[ao + 5]
local block, episode_ttl = tonumber(A[ao + 6]), A[ao + 7]
if redis.call('HGET', episode, 'id') ~= episode_id then
  return {0}
end
if decision == 'applied' then
  redis.call('DEL', episode)
  if block > 0 then
    redis.call('SET', applied, now, 'PX', block)
  end
else
  redis.call('HSET', episode, 'decision', decision, 'until', until_, 'note', note, 'decided_at', now)
  redis.call('EXPIRE', episode, episode_ttl)
end
return {1}
