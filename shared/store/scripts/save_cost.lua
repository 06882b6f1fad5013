-- KEYS: per row its app hash and its usage history; then per cluster item its key and that
--   key's timestamp key.
-- ARGV: the count of rows in this call; the payload's timestamp; its UTC day number; the
--   history's half-life in seconds ('' : no history kept); now (the service's clock); the app
--   hash's lifetime (0: for ever); the cooldown; '1' to send every mirror. Then per row one
--   argument, its req_cpu, req_mem, usage_cpu_curr, usage_mem_curr and CPU bucket field
--   (`cpu:<i>`, '' without history) joined by commas; then per item its value.
-- Store a cost payload. Joined at load time after prologue.lua, the history constants,
-- record_usage.lua and saved_state.lua.
-- Per row: write unless the stored cost data is newer, count the sample in the usage history
-- (record_usage skips a sample it counted already) and answer what saved_state answers: the
-- forecast fields, forecast_timestamp, last_trigger and quiet_since; 0 when skipped. The app
-- hash's lifetime is renewed on the first sample of each hour of payload time. Per item: write
-- unless its timestamp key is newer; answer the value stored after. The per-row work is kept to
-- one HMGET and one HSET (two more with a history): Redis time per deployment is what bounds a
-- large payload. A row's numbers come joined in one argument: splitting it here costs Redis less
-- than taking four more arguments, and the client less than packing them.
local rows, ts, day = tonumber(A[ao + 1]), A[ao + 2], tonumber(A[ao + 3])
local half_life, now, ttl = tonumber(A[ao + 4]), tonumber(A[ao + 5]), tonumber(A[ao + 6])
local cooldown, always = tonumber(A[ao + 7]), A[ao + 8] == '1'
local stamp = tonumber(ts)
local out, v, k, match = {}, ao + 8, ko, string.match
for i = 1, rows do
  local app, history = K[k + 1], K[k + 2]
  local got = redis.call('HMGET', app, 'cost_timestamp', 'pred_cpu_peak', 'pred_mem_peak', 'forecast_timestamp',
    'last_trigger', 'quiet_since', 'watch')
  local stored = tonumber(got[1])
  if not stored or stored <= stamp then
    local req_cpu, req_mem, usage_cpu, usage_mem, bucket = match(A[v + i], '^([^,]*),([^,]*),([^,]*),([^,]*),(.*)$')
    redis.call('HSET', app, 'cost_timestamp', ts, 'req_cpu', req_cpu, 'req_mem', req_mem,
      'usage_cpu_curr', usage_cpu, 'usage_mem_curr', usage_mem)
    if ttl > 0 and (not stored or math.floor(stored / 3600) ~= math.floor(stamp / 3600)) then
      redis.call('EXPIRE', app, ttl)
    end
    if half_life then
      record_usage(history, stamp, ts, bucket, day, usage_mem, half_life)
    end
    out[i] = saved_state(got, 6, app, history, now, cooldown, always, half_life ~= nil)
  else
    out[i] = 0
  end
  k = k + 2
end
v = v + rows
for j = 1, (nk - 2 * rows) / 2 do
  local value_key, stamp_key = K[k + 1], K[k + 2]
  local stored = tonumber(redis.call('GET', stamp_key))
  if not stored or stored <= stamp then
    redis.call('SET', value_key, A[v + 1])
    redis.call('SET', stamp_key, ts)
  end
  out[rows + j] = redis.call('GET', value_key)
  v, k = v + 1, k + 2
end
return out
