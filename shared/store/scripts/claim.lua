-- KEYS: per deployment its cooldown, escalation, pending, episode and applied keys (one slot).
-- ARGV: now, the lease in ms, the cooldown, the reminder interval, the episode's lifetime; then
--   per deployment '1' when a risk rule fired, '1' when something material changed, the item id
--   and the id a new episode would get.
-- Decide, per firing deployment, what goes to the agent, and claim it, in one atomic step over
-- the deployment's trigger slot. Joined at load time after prologue.lua.
-- With the window free: the first item of a new episode (unless `applied` blocks a waste-only
-- one), or in an open episode a `changed` item, a `reminder` once the reminder interval has run
-- since the last window's item, or with a risk rule always; a snooze holds every waste item
-- back, `no_change` the reminders. With the window running: a risk rule escalates it once (a
-- window opened by a risk rule is marked escalated at once). What is won is taken for the lease
-- only (settle.lua gives it the rest of the window), and counts the episode's next sequence
-- number, unless an earlier claim of the same slot was left unsettled: then its item id,
-- sequence and notify are sent again. Answers per deployment 0 (held by the window), 3 (held by
-- the reminder interval, a decision or `applied`), or {1 (window) or 2 (escalation), item id, 1
-- when re-sent for an unsettled claim (else 0), episode id, its opened_at, sequence, notify, the
-- decision in force ('' if none), its until, the reminder interval in force}. After
-- `no_change`, reminders come at most once per the span the agent gave (`until` - when it
-- decided), also once that span is over.
local now, lease, cooldown = A[ao + 1], tonumber(A[ao + 2]), tonumber(A[ao + 3])
local clock, reminder, episode_ttl = tonumber(A[ao + 1]), tonumber(A[ao + 4]), A[ao + 5]
if ko == 1 then
  -- Keys of several slots on one cluster node: read each first, so that a key the node no longer
  -- serves fails the script before it claims anything, and the retry key by key finds no claim
  -- of its own to lose to.
  for i = 1, nk do
    redis.call('EXISTS', K[ko + i])
  end
end
local out = {}
for i = 1, nk / 5 do
  local b, a = ko + 5 * i - 5, ao + 5 + 4 * i - 4
  local window, escalation, pending, episode, applied = K[b + 1], K[b + 2], K[b + 3], K[b + 4], K[b + 5]
  local risk, changed, item_id, new_episode = A[a + 1] == '1', A[a + 2] == '1', A[a + 3], A[a + 4]
  local ep = redis.call('HMGET', episode, 'id', 'opened_at', 'window_at', 'decision', 'until', 'decided_at')
  local until_ = tonumber(ep[5]) or 0
  local decision = (ep[1] and until_ > clock) and ep[4] or ''
  -- After `no_change` the agent is reminded at most as often as the span it asked for.
  local every = reminder
  if ep[4] == 'no_change' and tonumber(ep[6]) then
    every = math.max(reminder, until_ - tonumber(ep[6]))
  end
  local slot, notify = nil, nil
  -- The window runs on the claims' clock: its key's TTL only tidies up after it (and frees a
  -- claim whose lease ran out).
  local opened = tonumber(redis.call('GET', window))
  if not opened or opened + cooldown <= clock then
    if not ep[1] then
      if risk or redis.call('EXISTS', applied) == 0 then
        notify = 'first'
      end
    elseif risk then
      notify = changed and 'changed' or 'reminder'
    elseif decision ~= 'snooze' then
      if changed then
        notify = 'changed'
      elseif decision ~= 'no_change' and (not ep[3] or tonumber(ep[3]) + every <= clock) then
        notify = 'reminder'
      end
    end
    if notify then
      redis.call('SET', window, now, 'PX', lease)
      if risk then
        redis.call('SET', escalation, now, 'PX', lease)
      end
      -- A new window: an escalation left pending belongs to the one before.
      redis.call('HDEL', pending, 'escalation')
      slot = 'window'
    else
      out[i] = 3
    end
  elseif risk then
    -- An escalation key older than the window belongs to an earlier one.
    local taken = tonumber(redis.call('GET', escalation))
    if not taken or taken < opened then
      local left = math.floor((opened + cooldown - clock) * 1000)
      redis.call('SET', escalation, now, 'PX', math.max(1, math.min(lease, left)))
      slot, notify = 'escalation', ep[1] and 'escalation' or 'first'
    end
  end
  if slot then
    if not ep[1] then
      ep[1], ep[2] = new_episode, now
      redis.call('HSET', episode, 'id', new_episode, 'opened_at', now, 'sequence', 0)
    end
    local prior, id, sequence, reclaimed = redis.call('HGET', pending, slot), item_id, nil, 0
    if prior then
      local p1, p2 = string.find(prior, ' ', 1, true)
      local p3 = string.find(prior, ' ', p2 + 1, true)
      id, sequence, notify, reclaimed = string.sub(prior, 1, p1 - 1), tonumber(string.sub(prior, p2 + 1, p3 - 1)),
        string.sub(prior, p3 + 1), 1
    else
      sequence = redis.call('HINCRBY', episode, 'sequence', 1)
      redis.call('HSET', pending, slot, id .. ' ' .. sequence .. ' ' .. notify)
    end
    redis.call('EXPIRE', pending, cooldown)
    redis.call('EXPIRE', episode, episode_ttl)
    out[i] = {slot == 'window' and 1 or 2, id, reclaimed, ep[1], ep[2], sequence, notify, decision, until_, every}
  elseif not out[i] then
    out[i] = 0
  end
end
return out
