-- wrk script for the benchmark: the call's shape from the environment, and a summary
-- line of JSON at the end (wrk's own text output has no p99.9).
--   BENCH_METHOD      GET or POST
--   BENCH_BODY_BYTES  size of a JSON body to send (0: none)
--   BENCH_DELAY_MS    pause on each connection before each call (0: saturate)

local method = os.getenv("BENCH_METHOD") or "GET"
local body_bytes = tonumber(os.getenv("BENCH_BODY_BYTES") or "0")
local delay_ms = tonumber(os.getenv("BENCH_DELAY_MS") or "0")

wrk.method = method
wrk.headers["Accept"] = "application/json"
if body_bytes > 0 then
  -- {"pad":"xxx..."} of exactly body_bytes bytes
  wrk.body = '{"pad":"' .. string.rep("x", body_bytes - 10) .. '"}'
  wrk.headers["Content-Type"] = "application/json"
end

if delay_ms > 0 then
  function delay()
    return delay_ms
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"p999":%d,"max":%d,"mean":%.1f}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.mean))
end
