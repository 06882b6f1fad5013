-- KEYS: none: a fragment; its function is given the keys it touches.
-- ARGV: none: the same for its arguments.
-- A fragment, not a script: joined into save_cost.lua and save_forecast.lua at load time
-- (shared/store/lua.py), so that both answer a written row alike.
--
-- saved_state(got, n, app, history, now, cooldown, always, histories): a written row's answer.
-- `got` is the row's HMGET from before the write: its own timestamp field, then the fields read
-- back up to index n (the last two of them last_trigger and quiet_since), then `watch`. The
-- fields read back are one comma-joined string ('' where absent). A row whose app hash holds no
-- episode mirror (no `watch`) answers that string; one that does answers that string with one
-- more field, '-', inside its running window (a waste rule is held there without the mirror: a
-- string, not a table, as most firing rows are there and a table per row costs Redis and the
-- client more), else {that string, the mirror}, with the usage history's fields third when
-- `histories` are kept and `watch` (the time from which the episode may need the
-- recommendation) has come. `always`: send every mirror.
local function saved_state(got, n, app, history, now, cooldown, always, histories)
  for j = 2, n do
    if not got[j] then
      got[j] = ''
    end
  end
  local joined = table.concat(got, ',', 2, n)
  local watch = got[n + 1]
  if not watch then
    return joined
  end
  -- Inside a running window a waste rule is held without the episode; past it, or with a quiet
  -- count running, the worker needs the mirror.
  local last = tonumber(got[n - 1])
  if always or not last or last + cooldown <= now or got[n] ~= '' then
    local mirror = redis.call('HGET', app, 'episode') or ''
    watch = tonumber(watch)
    if histories and watch and watch <= now then
      return {joined, mirror, redis.call('HGETALL', history)}
    end
    return {joined, mirror}
  end
  return joined .. ',-'
end
