-- KEYS: per deployment its resolving, pending and episode keys.
-- ARGV: our value, the lease in ms; then per deployment the episode id the mirror names and the
--   item id.
-- Claim the resolved item of each open episode that has gone quiet, once per episode: the
-- `resolving` key is its lease, its pending id and sequence survive it. Joined at load time
-- after prologue.lua.
-- Answers per deployment 0 (no such episode open, or its resolution in flight) or {item id, 1
-- when re-sent for an unsettled claim (else 0), opened_at, sequence}.
local value, lease = A[ao + 1], tonumber(A[ao + 2])
local out = {}
for i = 1, nk / 3 do
  local resolving, pending, episode = K[ko + 3 * i - 2], K[ko + 3 * i - 1], K[ko + 3 * i]
  local episode_id, item_id = A[ao + 2 * i + 1], A[ao + 2 * i + 2]
  local ep = redis.call('HMGET', episode, 'id', 'opened_at')
  if ep[1] == episode_id and redis.call('SET', resolving, value, 'NX', 'PX', lease) then
    local prior = redis.call('HGET', pending, 'resolved')
    if prior then
      local p1 = string.find(prior, ' ', 1, true)
      out[i] = {string.sub(prior, 1, p1 - 1), 1, ep[2], tonumber(string.sub(prior, p1 + 1))}
    else
      local sequence = redis.call('HINCRBY', episode, 'sequence', 1)
      redis.call('HSET', pending, 'resolved', item_id .. ' ' .. sequence)
      out[i] = {item_id, 0, ep[2], sequence}
    end
  else
    out[i] = 0
  end
end
return out
