-- Copilot's shared key budgets: the rule of src/auth/bucket.rs, one round trip per operation.
-- KEYS[1]: the key's request bucket, KEYS[2]: its token bucket (one hash tag: one cluster slot).
-- ARGV[1]: op: "admit" | "take" | "admit_take" | "charge" | "refund"
-- ARGV[2]: requests_per_minute (0: none)   ARGV[3]: tokens_per_minute (0: none)
-- ARGV[4]: admit: 1 when the call spends tokens (Generate, Chat), else 0;
--          take/admit_take/charge/refund: the tokens
-- ARGV[5]: tests only: "now" in microseconds; empty: the server's clock (TIME)
-- ARGV[6]: admit_take: 1 when the call spends tokens, else 0 (admit, then take, in one trip)
-- Returns {0} done, or {1, retry_after_ms} (requests) / {2, retry_after_ms} (tokens).
-- A bucket is a hash {l = level, t = microseconds}; no key means a full bucket.
local EPSILON = 1e-9
local MINUTE_US = 60000000
local now = tonumber(ARGV[5] or '')
if not now then
  local time = redis.call('TIME')
  now = tonumber(time[1]) * 1000000 + tonumber(time[2])
end

-- The level refilled to now (continuous refill, never past the capacity; time never goes back).
local function load(key, capacity)
  local stored = redis.call('HMGET', key, 'l', 't')
  local level, at = tonumber(stored[1]), tonumber(stored[2])
  if not level or not at then return capacity, now end
  local elapsed = math.max(now - at, 0)
  return math.min(level + elapsed * capacity / MINUTE_US, capacity), math.max(at, now)
end

-- A full bucket is no key; any other expires once the refill would have filled it.
local function store(key, capacity, level, at)
  if level >= capacity then
    redis.call('DEL', key)
    return
  end
  redis.call('HSET', key, 'l', string.format('%.17g', level), 't', string.format('%.17g', at))
  redis.call('PEXPIRE', key, math.ceil((capacity - level) * 60000 / capacity) + 1000)
end

-- Milliseconds until `amount` is there, rounded up (as Bucket::wait_for).
local function wait_for(capacity, level, amount)
  return math.max(math.ceil((amount - level) * 60000 / capacity - 1e-6), 0)
end

local op = ARGV[1]
local requests, tokens = tonumber(ARGV[2]), tonumber(ARGV[3])
local amount = tonumber(ARGV[4])

-- Admission: completions are refused while the token budget is spent (in debt or empty), and every
-- call takes one request. Returns nil when admitted, else the refusal.
local function admit(uses_tokens)
  if tokens > 0 and uses_tokens then
    local level = load(KEYS[2], tokens)
    if level + EPSILON < 1 then return {2, wait_for(tokens, level, 1)} end
  end
  if requests > 0 then
    local level, at = load(KEYS[1], requests)
    if level + EPSILON < 1 then return {1, wait_for(requests, level, 1)} end
    store(KEYS[1], requests, level - 1, at)
  end
  return nil
end

if op == 'admit' then
  return admit(amount > 0) or {0}
end
if op == 'admit_take' then
  local refused = admit(ARGV[6] == '1')
  if refused then return refused end
  op = 'take'
end

if tokens <= 0 then return {0} end
local level, at = load(KEYS[2], tokens)
if op == 'take' then
  if level + EPSILON < amount then return {2, wait_for(tokens, level, amount)} end
  store(KEYS[2], tokens, level - amount, at)
elseif op == 'charge' then
  store(KEYS[2], tokens, level - amount, at)   -- what is not there becomes debt
elseif op == 'refund' then
  store(KEYS[2], tokens, math.min(level + amount, tokens), at)
else
  return redis.error_reply('unknown op ' .. tostring(op))
end
return {0}
