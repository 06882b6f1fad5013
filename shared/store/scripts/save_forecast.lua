-- KEYS: per row its app hash and its usage history (read only); then per cluster item its key.
-- ARGV: the count of rows in this call; the payload's timestamp; now (the service's clock); the
--   app hash's lifetime (0: for ever); the cooldown; '1' to send every mirror; '1' when usage
--   histories are kept. Then per row one argument, its pred_cpu_peak and pred_mem_peak joined by a
--   comma (fewer arguments cost Redis and the client less than the split).
-- Store a forecast payload. Joined at load time after prologue.lua and saved_state.lua.
-- Per row: write unless the stored forecast data is newer and answer what saved_state answers:
-- the cost fields, cost_timestamp, last_trigger and quiet_since; 0 when skipped. The app hash's
-- lifetime is renewed on the first sample of each hour of payload time. Per item: answer its
-- value (a forecast payload does not write the cluster totals).
local rows, ts, now, ttl = tonumber(A[ao + 1]), A[ao + 2], tonumber(A[ao + 3]), tonumber(A[ao + 4])
local cooldown, always, histories = tonumber(A[ao + 5]), A[ao + 6] == '1', A[ao + 7] == '1'
local stamp = tonumber(ts)
local out, v, k, match = {}, ao + 7, ko, string.match
for i = 1, rows do
  local app, history = K[k + 1], K[k + 2]
  local got = redis.call('HMGET', app, 'forecast_timestamp', 'req_cpu', 'req_mem', 'usage_cpu_curr',
    'usage_mem_curr', 'cost_timestamp', 'last_trigger', 'quiet_since', 'watch')
  local stored = tonumber(got[1])
  if not stored or stored <= stamp then
    local cpu_peak, mem_peak = match(A[v + i], '^([^,]*),(.*)$')
    redis.call('HSET', app, 'forecast_timestamp', ts, 'pred_cpu_peak', cpu_peak, 'pred_mem_peak', mem_peak)
    if ttl > 0 and (not stored or math.floor(stored / 3600) ~= math.floor(stamp / 3600)) then
      redis.call('EXPIRE', app, ttl)
    end
    out[i] = saved_state(got, 8, app, history, now, cooldown, always, histories)
  else
    out[i] = 0
  end
  k = k + 2
end
for j = 1, nk - 2 * rows do
  out[rows + j] = redis.call('GET', K[k + j])
end
return out
