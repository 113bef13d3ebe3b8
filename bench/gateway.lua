-- POST /api/v1/render with the key from HG_KEY; prints the same RESULT line
-- as latency.lua (percentiles in microseconds, every error counter).
wrk.method = "POST"
wrk.body = '{"prompt":"bench"}'
wrk.headers["Content-Type"] = "application/json"
local key = os.getenv("HG_KEY")
if key then
  wrk.headers["Authorization"] = "Bearer " .. key
end

done = function(summary, latency, requests)
  local e = summary.errors
  local function p(q) return math.floor(latency:percentile(q)) end
  io.write(string.format(
    "RESULT requests=%d duration_us=%d p50=%d p90=%d p99=%d p999=%d max=%d " ..
    "connect=%d read=%d write=%d status=%d timeout=%d\n",
    summary.requests, summary.duration, p(50), p(90), p(99), p(99.9),
    math.floor(latency.max), e.connect, e.read, e.write, e.status, e.timeout))
end
