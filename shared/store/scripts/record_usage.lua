-- KEYS: none: a fragment; its function is given the keys it touches.
-- ARGV: none: the same for its arguments.
-- A fragment, not a script: joined into save_cost.lua at load time (shared/store/lua.py), after
-- the constants MAX_DECAY_EXPONENT, WEIGHT_SCALE, WINDOW_SECONDS, MEMORY_WINDOWS, MAX_FIELDS and
-- HISTORY_TTL_SECONDS, which come from shared/core/history.py (its docstring names the fields).
--
-- record_usage(key, ts, ts_raw, cpu_field, day, mem_raw, half_life): count a cost sample in the
-- history hash `key`, unless a sample at least as new was counted already. ts is the sample's Unix
-- seconds and ts_raw the same as a string; cpu_field its bucket (`cpu:<i>`, bucket_index), day its
-- UTC day number (a number), mem_raw the memory in MiB (a string, stored as it is), half_life in
-- seconds. The caller works out what a whole payload shares once. Returns 1 when counted, 0 when
-- not. A sample costs two redis.call (HMGET, HSET) of fields near the front of the hash but for its
-- bucket (a listpack finds a field by scanning, so a field's position is part of its cost: today's
-- peak therefore has a field of its own, made with the key, and moves to `mem:<day>` once its day
-- is over). The rest runs only on a key's first sample, the first sample of a day (the day before
-- is kept, older days go), of an hour (EXPIRE), a new bucket (HLEN), a rescale (every
-- MAX_DECAY_EXPONENT half-lives) or a merge.
local function record_usage(key, ts, ts_raw, cpu_field, day, mem_raw, half_life)
  local h = redis.call('HMGET', key, 'last_sample', 'reference', 'samples', 'mem_today', cpu_field)
  local last = tonumber(h[1])
  if last and ts <= last then
    return 0
  end
  local reference = tonumber(h[2])
  local current = tonumber(h[5])
  if not reference then
    reference = ts
    redis.call('HSET', key, 'first_sample', ts_raw, 'reference', ts_raw)
  elseif (ts - reference) / half_life > MAX_DECAY_EXPONENT then
    local factor = 2 ^ ((ts - reference) / half_life)
    local all = redis.call('HGETALL', key)
    for i = 1, #all, 2 do
      if string.sub(all[i], 1, 4) == 'cpu:' then
        local w = math.floor(tonumber(all[i + 1]) / factor)
        if w > 0 then
          redis.call('HSET', key, all[i], w)
        else
          redis.call('HDEL', key, all[i])
        end
      end
    end
    current = tonumber(redis.call('HGET', key, cpu_field))
    reference = ts
    redis.call('HSET', key, 'reference', ts_raw)
  end
  local weight = (current or 0) + math.floor(WEIGHT_SCALE * 2 ^ ((ts - reference) / half_life) + 0.5)
  local samples = (tonumber(h[3]) or 0) + 1
  local peak = tonumber(h[4])
  local last_day = last and math.floor(last / WINDOW_SECONDS)
  if last_day and last_day ~= day then
    -- A new day (once a day, not per sample): the last sample's day keeps its peak under its own
    -- number, and the days that fell out of the last MEMORY_WINDOWS go. Histories written before
    -- mem_today kept their days in slot pairs (mem_day:<s>, mem_peak:<s>): those carry over too.
    local all, peaks, pairs_by_slot, gone = redis.call('HGETALL', key), {}, {}, {}
    local function keep(d, raw)
      if d and raw and d > day - MEMORY_WINDOWS and (not peaks[d] or tonumber(raw) > tonumber(peaks[d])) then
        peaks[d] = raw
      end
    end
    for i = 1, #all, 2 do
      local name = all[i]
      local kind, rest = string.match(name, '^(mem[^:]*):(%d+)$')
      if kind == 'mem' then
        keep(tonumber(rest), all[i + 1])
        gone[#gone + 1] = name
      elseif kind == 'mem_day' or kind == 'mem_peak' then
        pairs_by_slot[rest] = pairs_by_slot[rest] or {}
        pairs_by_slot[rest][kind] = all[i + 1]
        gone[#gone + 1] = name
      end
    end
    for _, pair in pairs(pairs_by_slot) do
      keep(tonumber(pair.mem_day), pair.mem_peak)
    end
    keep(last_day, h[4])
    if #gone > 0 then
      redis.call('HDEL', key, unpack(gone))
    end
    for d, raw in pairs(peaks) do
      redis.call('HSET', key, 'mem:' .. d, raw)
    end
    peak = nil
  end
  if not peak or tonumber(mem_raw) > peak then
    redis.call('HSET', key, 'last_sample', ts_raw, 'samples', samples, 'mem_today', mem_raw, cpu_field, weight)
  else
    redis.call('HSET', key, 'last_sample', ts_raw, 'samples', samples, cpu_field, weight)
  end
  if not current and redis.call('HLEN', key) > MAX_FIELDS then
    -- Merge the lightest other bucket into the nearest one above it (below when none is): the size
    -- stays bounded, and weight only moves up, so percentiles can only err on the safe side.
    local all = redis.call('HGETALL', key)
    local bucket = tonumber(string.sub(cpu_field, 5))
    local lightest, lightest_w, indexes = nil, nil, {}
    for i = 1, #all, 2 do
      if string.sub(all[i], 1, 4) == 'cpu:' then
        local index, w = tonumber(string.sub(all[i], 5)), tonumber(all[i + 1])
        indexes[#indexes + 1] = index
        if index ~= bucket and (not lightest_w or w < lightest_w) then
          lightest, lightest_w = index, w
        end
      end
    end
    local above, below = nil, nil
    for _, index in ipairs(indexes) do
      if index > lightest and (not above or index < above) then above = index end
      if index < lightest and (not below or index > below) then below = index end
    end
    redis.call('HINCRBY', key, 'cpu:' .. (above or below), lightest_w)
    redis.call('HDEL', key, 'cpu:' .. lightest)
  end
  -- Once per hour of samples, not per sample: the key then outlives its last sample by
  -- HISTORY_TTL_SECONDS plus at most an hour, for a third less Redis time per sample.
  if not last or math.floor(ts / 3600) ~= math.floor(last / 3600) then
    redis.call('EXPIRE', key, HISTORY_TTL_SECONDS + 3600)
  end
  return 1
end
