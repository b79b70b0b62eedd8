-- wrk script: Segment tracking calls for bench/process.py, each one new (unique messageId).
--
-- A storefront's mix over a pool of customers: Product Viewed, identify (traits, email consent),
-- Checkout Started (items, value), Order Completed. Settings from the environment:
--   BENCH_AUTH       the Authorization header: Basic base64("<write key>:")
--   BENCH_PREFIX     makes messageIds unique across runs
--   BENCH_CUSTOMERS  size of the customer pool (default 1000)
--   BENCH_THREADS    wrk -t (the Lua threads cannot see it)
--   BENCH_RATE       N: about N requests/s in all, on a fixed schedule; 0: closed loop
-- At the end one line "BENCH_JSON {...}" gives the counts bench/process.py reads.

local ffi = require("ffi")
ffi.cdef [[
  typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
  int clock_gettime(int clk_id, bench_timespec *tp);
]]
local ts = ffi.new("bench_timespec")
local function clock_ms(which)
  ffi.C.clock_gettime(which, ts)
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end

local auth = assert(os.getenv("BENCH_AUTH"), "BENCH_AUTH is not set")
local prefix = os.getenv("BENCH_PREFIX") or "0"
local customers = tonumber(os.getenv("BENCH_CUSTOMERS") or "1000")
local total_rate = tonumber(os.getenv("BENCH_RATE") or "0")

tid = 0
sent = 0
statuses = {}
late = 0
local interval = 0.0
local next_slot = nil
local threads = {}
local counter = 0

function setup(thread)
  counter = counter + 1
  thread:set("tid", counter)
  table.insert(threads, thread)
end

function init(args)
  if total_rate > 0 then
    interval = 1000.0 * tonumber(os.getenv("BENCH_THREADS") or "1") / total_rate
  end
end

local function now_iso()
  local ms = clock_ms(0) -- CLOCK_REALTIME
  local secs = math.floor(ms / 1000)
  return os.date("!%Y-%m-%dT%H:%M:%S", secs) .. string.format(".%03dZ", math.floor(ms % 1000))
end

local function call(n)
  local user = (n * 7919 + tid * 104729) % customers
  local head = string.format('{"messageId":"%s-%d-%d","userId":"u%d","timestamp":"%s"', prefix, tid, n, user, now_iso())
  local kind = n % 10
  if kind <= 3 then
    return "/v1/track", head .. string.format(
      ',"event":"Product Viewed","properties":{"product_id":"p%d","sku":"SKU-%d","name":"Mug %d",'
        .. '"price":12.5,"url":"https://shop.example/p/%d"}}', n % 50, n % 50, n % 50, n % 50)
  elseif kind <= 5 then
    return "/v1/identify", head .. string.format(
      ',"traits":{"email":"user%d@example.com","first_name":"Ann%d","plan":"p%d","email_consent":"%s"}}',
      user, n % 13, n % 3, (n % 20 == 4) and "unsubscribed" or "subscribed")
  elseif kind <= 8 then
    return "/v1/track", head .. string.format(
      ',"event":"Checkout Started","properties":{"checkout_id":"co%d-%d","value":37.5,"currency":"EUR",'
        .. '"products":[{"product_id":"p1","sku":"SKU-1","name":"Mug","price":12.5,"quantity":1},'
        .. '{"product_id":"p2","sku":"SKU-2","name":"Teapot","price":25,"quantity":1}]}}', tid, n)
  end
  return "/v1/track", head .. string.format(
    ',"event":"Order Completed","properties":{"order_id":"o%s-%d-%d","total":37.5,"currency":"EUR"}}',
    prefix, tid, n)
end

function request()
  sent = sent + 1
  local path, body = call(sent)
  return "POST " .. path .. " HTTP/1.1\r\n"
    .. "Host: " .. wrk.host .. ":" .. tostring(wrk.port) .. "\r\n"
    .. "Content-Type: application/json\r\n"
    .. "Authorization: " .. auth .. "\r\n"
    .. "Content-Length: " .. #body .. "\r\n"
    .. "\r\n"
    .. body
end

function response(status, headers, resp_body)
  statuses[status] = (statuses[status] or 0) + 1
end

if total_rate > 0 then
  -- a fixed schedule: each free connection takes the next slot; a slot already past is "late"
  function delay()
    local t = clock_ms(1)
    if next_slot == nil then
      next_slot = t
    end
    next_slot = next_slot + interval
    local wait = next_slot - t
    if wait < -1.0 then
      late = late + 1
    end
    return wait > 0 and math.floor(wait) or 0
  end
end

function done(summary, latency, requests)
  local all, total_sent, total_late = {}, 0, 0
  for _, thread in ipairs(threads) do
    total_sent = total_sent + (thread:get("sent") or 0)
    total_late = total_late + (thread:get("late") or 0)
    for code, n in pairs(thread:get("statuses") or {}) do
      all[code] = (all[code] or 0) + n
    end
  end
  local parts = {}
  for code, n in pairs(all) do
    table.insert(parts, string.format('"%d":%d', code, n))
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"duration_us":%d,"completed":%d,"sent":%d,"statuses":{%s},"late":%d,'
      .. '"socket_errors":%d,"ack_p50_us":%d,"ack_p99_us":%d}\n',
    summary.duration, summary.requests, total_sent, table.concat(parts, ","), total_late,
    e.connect + e.read + e.write + e.timeout, latency:percentile(50), latency:percentile(99)))
end
