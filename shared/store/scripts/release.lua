-- KEYS: per release unit its cooldown, escalation, pending, episode and resolving keys; then,
--   with a record, the failed list.
-- ARGV: our value, the count of release units, each one's WINDOW, RISKY_WINDOW, ESCALATION or
--   RESOLUTION flag; then the record.
-- Give back claims, each only while it still holds our value: a later claim must survive our
-- failure. A claim's sequence number is given back while it is still the episode's last, and an
-- episode whose first item failed is gone again. Then, optionally, keep a failed delivery's
-- record. Joined at load time after prologue.lua and the constants WINDOW, ESCALATION,
-- RESOLUTION (the claim flags of shared/store/repository.py) and FAILED_KEEP.
-- Answers per release unit the count of keys given back, then 1 for a record kept.
local value, releases = A[ao + 1], tonumber(A[ao + 2])
local function give_back(pending, episode, slot)
  local prior = redis.call('HGET', pending, slot)
  redis.call('HDEL', pending, slot)
  if not prior then
    return
  end
  local p1 = string.find(prior, ' ', 1, true)
  local p2 = string.find(prior, ' ', p1 + 1, true)
  local sequence = tonumber(string.sub(prior, p1 + 1, p2 and p2 - 1 or nil))
  if tonumber(redis.call('HGET', episode, 'sequence')) == sequence then
    if sequence == 1 then
      redis.call('DEL', episode)
    else
      redis.call('HINCRBY', episode, 'sequence', -1)
    end
  end
end
local out = {}
for i = 1, releases do
  local b = ko + 5 * i - 5
  local window, escalation, pending, episode, resolving = K[b + 1], K[b + 2], K[b + 3], K[b + 4], K[b + 5]
  local flag, done = A[ao + 2 + i], 0
  if flag == RESOLUTION then
    if redis.call('GET', resolving) == value then
      done = redis.call('DEL', resolving)
      give_back(pending, episode, 'resolved')
    end
  else
    if flag ~= ESCALATION and redis.call('GET', window) == value then
      done = done + redis.call('DEL', window)
      give_back(pending, episode, 'window')
    end
    if flag ~= WINDOW and redis.call('GET', escalation) == value then
      done = done + redis.call('DEL', escalation)
      if flag == ESCALATION then
        give_back(pending, episode, 'escalation')
      end
    end
  end
  out[i] = done
end
if nk > 5 * releases then
  local failed = K[ko + 5 * releases + 1]
  redis.call('LPUSH', failed, A[ao + 3 + releases])
  redis.call('LTRIM', failed, 0, FAILED_KEEP - 1)
  out[releases + 1] = 1
end
return out
