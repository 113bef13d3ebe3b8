-- wrk's own summary stops at p99; this prints one machine-readable line with
-- the percentiles the report needs (microseconds) and every error counter.
done = function(summary, latency, requests)
  local e = summary.errors
  local function p(q) return math.floor(latency:percentile(q)) end
  io.write(string.format(
    "RESULT requests=%d duration_us=%d p50=%d p90=%d p99=%d p999=%d max=%d " ..
    "connect=%d read=%d write=%d status=%d timeout=%d\n",
    summary.requests, summary.duration, p(50), p(90), p(99), p(99.9),
    math.floor(latency.max), e.connect, e.read, e.write, e.status, e.timeout))
end
