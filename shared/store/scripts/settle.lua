-- KEYS: per app unit the app key; then per claim unit its cooldown, escalation, pending, episode
--   and resolving keys.
-- ARGV: our value, the window's milliseconds left, now, the cooldown, the count of app units,
--   the episode's lifetime; then per app unit last_trigger ('' for none), the episode mirror (''
--   to drop it with `watch` and `quiet_since`: the episode ended) and `watch`; then per claim
--   unit its flag, the episode id, the item's notify and its reasons as JSON.
-- After a delivery. Joined at load time after prologue.lua and the constants WINDOW,
-- RISKY_WINDOW, ESCALATION and RESOLUTION (the claim flags of shared/store/repository.py).
-- App units note what they are given. Each claim still ours (its key holds our value) is kept
-- for the rest of its window instead of its lease and its pending id dropped, and the episode
-- notes the item (a window item also restarts the reminder clock); a resolution ends the
-- episode. An escalation ends with its window: the window's value is when it was claimed.
-- Answers 1 per app unit, then per claim unit 1 when it was still ours (else 0).
local value, left, now, cooldown = A[ao + 1], tonumber(A[ao + 2]), tonumber(A[ao + 3]), tonumber(A[ao + 4])
local apps, episode_ttl = tonumber(A[ao + 5]), A[ao + 6]
local function keep(key, ms)
  if ms > 0 then
    redis.call('PEXPIRE', key, ms)
  else
    redis.call('DEL', key)
  end
end
local out, a = {}, ao + 6
for i = 1, apps do
  local key, last, mirror, watch = K[ko + i], A[a + 1], A[a + 2], A[a + 3]
  if last ~= '' then
    redis.call('HSET', key, 'last_trigger', last)
  end
  if mirror ~= '' then
    redis.call('HSET', key, 'episode', mirror, 'watch', watch)
  else
    redis.call('HDEL', key, 'episode', 'watch', 'quiet_since')
  end
  out[i], a = 1, a + 3
end
for i = 1, (nk - apps) / 5 do
  local k = ko + apps + 5 * i - 5
  local window, escalation, pending, episode, resolving = K[k + 1], K[k + 2], K[k + 3], K[k + 4], K[k + 5]
  local flag, episode_id, notify, reasons, done = A[a + 1], A[a + 2], A[a + 3], A[a + 4], 0
  local ours = redis.call('HGET', episode, 'id') == episode_id
  if flag == RESOLUTION then
    if redis.call('GET', resolving) == value then
      redis.call('DEL', resolving, pending)
      if ours then
        redis.call('DEL', episode)
      end
      done = 1
    end
  elseif flag == ESCALATION then
    if redis.call('GET', escalation) == value then
      local opened = tonumber(redis.call('GET', window))
      if opened then
        keep(escalation, math.floor((opened + cooldown - now) * 1000))
      end
      redis.call('HDEL', pending, 'escalation')
      done = 1
    end
  elseif redis.call('GET', window) == value then
    keep(window, left)
    if flag == RISKY_WINDOW and redis.call('GET', escalation) == value then
      keep(escalation, left)
    end
    redis.call('HDEL', pending, 'window')
    if ours then
      redis.call('HSET', episode, 'window_at', value)
    end
    done = 1
  end
  if done == 1 and ours and flag ~= RESOLUTION then
    redis.call('HSET', episode, 'last_sent_at', value, 'notify', notify, 'reasons', reasons)
    redis.call('EXPIRE', episode, episode_ttl)
  end
  out[apps + i], a = done, a + 4
end
return out
