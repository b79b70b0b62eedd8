-- wrk script: Shopify-like webhooks, each one new (unique X-Shopify-Webhook-Id and Event-Id).
--
-- Shopify's HMAC covers only the body, so one pre-signed body is sent with fresh ids every time.
-- Settings come from the environment (bench/ingest.py sets them):
--   BENCH_BODY_FILE  the JSON body (signed as is)
--   BENCH_HMAC       base64 HMAC-SHA256 of that body with the source's secret
--   BENCH_PREFIX     makes ids unique across runs (8 hex digits)
--   BENCH_THREADS    wrk -t (the Lua threads cannot see it)
--   BENCH_RATE       0: as fast as the connections go (closed loop);
--                    N: about N requests/s in all, on a fixed schedule (see delay below)
--   BENCH_PATH       request path, default /hooks/shop
-- At the end one line "BENCH_JSON {...}" carries every count bench/ingest.py needs: answers by
-- status, requests sent, socket errors, latency percentiles, and how late the schedule ran.

local ffi = require("ffi")
ffi.cdef [[
  typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
  int clock_gettime(int clk_id, bench_timespec *tp);
]]
local ts = ffi.new("bench_timespec")
local function now_ms()
  ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end

local function read_file(path)
  local f = assert(io.open(path, "rb"), "cannot open BENCH_BODY_FILE " .. tostring(path))
  local data = f:read("*a")
  f:close()
  return data
end

local body = read_file(os.getenv("BENCH_BODY_FILE"))
local hmac = assert(os.getenv("BENCH_HMAC"), "BENCH_HMAC is not set")
local prefix = os.getenv("BENCH_PREFIX") or "0"
local total_rate = tonumber(os.getenv("BENCH_RATE") or "0")
local path = os.getenv("BENCH_PATH") or "/hooks/shop"

-- per-thread state (each wrk thread runs this file in its own Lua state); globals, because
-- wrk's thread:set / thread:get reach only globals
tid = 0
sent = 0
statuses = {}
late = 0       -- sends that started after their slot had passed: every connection was busy
late_max = 0.0 -- ms
local interval = 0.0 -- ms between slots of this thread
local next_slot = nil
local head = nil

-- main state: keep the threads to collect their counts in done()
local threads = {}
local counter = 0

function setup(thread)
  counter = counter + 1
  thread:set("tid", counter)
  table.insert(threads, thread)
end

function init(args)
  head = "POST " .. path .. " HTTP/1.1\r\n"
    .. "Host: " .. wrk.host .. ":" .. tostring(wrk.port) .. "\r\n"
    .. "User-Agent: Shopify-Captain-Hook\r\n"
    .. "Accept: */*\r\n"
    .. "Content-Type: application/json\r\n"
    .. "Content-Length: " .. #body .. "\r\n"
    .. "X-Shopify-Topic: orders/create\r\n"
    .. "X-Shopify-Hmac-Sha256: " .. hmac .. "\r\n"
    .. "X-Shopify-Shop-Domain: bench-shop.myshopify.com\r\n"
    .. "X-Shopify-API-Version: 2025-07\r\n"
  if total_rate > 0 then
    -- wrk's Lua threads do not know how many there are; ingest.py passes it
    local n = tonumber(os.getenv("BENCH_THREADS") or "1")
    interval = 1000.0 * n / total_rate
  end
end

local function uuid(kind, n)
  -- 8-4-4-4-12, unique per (prefix, thread, n); kind tells webhook ids from event ids
  return string.format("%s-%04x-4%03x-%04x-%012x", prefix, tid, kind, 0x8000 + (n % 0x1000), n)
end

function request()
  sent = sent + 1
  return head
    .. "X-Shopify-Webhook-Id: " .. uuid(1, sent) .. "\r\n"
    .. "X-Shopify-Event-Id: " .. uuid(2, sent) .. "\r\n"
    .. "X-Shopify-Triggered-At: " .. os.date("!%Y-%m-%dT%H:%M:%S.000Z") .. "\r\n"
    .. "\r\n"
    .. body
end

function response(status, headers, resp_body)
  statuses[status] = (statuses[status] or 0) + 1
end

if total_rate > 0 then
  -- A fixed schedule: every free connection claims the next slot (interval ms after the last
  -- one) and waits for it. If a slot has already passed when a connection becomes free, every
  -- connection was busy: the send is late, counted, and latency from then on is understated
  -- (the coordinated-omission caveat); ingest.py reports the late share next to the percentiles.
  function delay()
    local t = now_ms()
    if next_slot == nil then
      next_slot = t
    end
    next_slot = next_slot + interval
    local wait = next_slot - t
    if wait < 0 then
      if wait < -1.0 then
        late = late + 1
        if -wait > late_max then
          late_max = -wait
        end
      end
      return 0
    end
    return math.floor(wait)
  end
end

function done(summary, latency, requests)
  local all = {}
  local total_sent, total_late, max_late = 0, 0, 0.0
  for _, thread in ipairs(threads) do
    total_sent = total_sent + (thread:get("sent") or 0)
    total_late = total_late + (thread:get("late") or 0)
    local lm = thread:get("late_max") or 0
    if lm > max_late then
      max_late = lm
    end
    local st = thread:get("statuses") or {}
    for code, n in pairs(st) do
      all[code] = (all[code] or 0) + n
    end
  end
  local parts = {}
  for code, n in pairs(all) do
    table.insert(parts, string.format('"%d":%d', code, n))
  end
  local pct = {}
  for _, p in ipairs({ 50, 75, 90, 99, 99.9 }) do
    table.insert(pct, string.format('"%s":%d', tostring(p), latency:percentile(p)))
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"duration_us":%d,"completed":%d,"sent":%d,"statuses":{%s},'
      .. '"errors":{"connect":%d,"read":%d,"write":%d,"timeout":%d,"status":%d},'
      .. '"latency_us":{"min":%d,"mean":%.1f,"max":%d,"stdev":%.1f,"percentiles":{%s}},'
      .. '"late":%d,"late_max_ms":%.1f}\n',
    summary.duration, summary.requests, total_sent, table.concat(parts, ","),
    e.connect, e.read, e.write, e.timeout, e.status,
    latency.min, latency.mean, latency.max, latency.stdev, table.concat(pct, ","),
    total_late, max_late))
end
