-- wrk script of the fleet benchmark: zipf-skewed keys, a share of writes, JSON summary.
--   BENCH_KEYS (10000), BENCH_ZIPF_S (1.1), BENCH_WRITE_SHARE (0.02) from the environment.
-- Each thread draws key k (1 = hottest) with probability proportional to 1 / k^s by a
-- binary search in the cumulative distribution, and POSTs (a write) with the write share.
local n = tonumber(os.getenv("BENCH_KEYS") or "10000")
local s = tonumber(os.getenv("BENCH_ZIPF_S") or "1.1")
local write_share = tonumber(os.getenv("BENCH_WRITE_SHARE") or "0.02")
local threads = {}
local counter = 0

function setup(thread)
  counter = counter + 1
  thread:set("id", counter)
  table.insert(threads, thread)
end

function init(args)
  math.randomseed(id * 7919 + os.time())
  cdf = {}
  local acc = 0
  for r = 1, n do
    acc = acc + 1 / (r ^ s)
    cdf[r] = acc
  end
  total = acc
  writes = 0
end

local function sample()
  local u = math.random() * total
  local lo, hi = 1, n
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if cdf[mid] < u then lo = mid + 1 else hi = mid end
  end
  return lo
end

function request()
  local k = sample()
  if math.random() < write_share then
    writes = writes + 1
    return wrk.format("POST", "/item/" .. k)
  end
  return wrk.format("GET", "/item/" .. k)
end

function done(summary, latency, requests)
  local w = 0
  for _, t in ipairs(threads) do
    w = w + (t:get("writes") or 0)
  end
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {"requests":%d,"duration_us":%d,"writes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"max":%d}}\n',
    summary.requests, summary.duration, w,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
