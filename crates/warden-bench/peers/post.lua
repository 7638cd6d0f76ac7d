-- wrk script for `warden bench peers`: POSTs one fixed JSON body (read from the file named by
-- $PEERS_BODY, one row of 64x16) and prints one summary line the bench parses.
local f = assert(io.open(os.getenv("PEERS_BODY"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("WARDEN requests=%d errors=%d us=%d p50us=%d p99us=%d\n",
    summary.requests, e.status + e.connect + e.read + e.write + e.timeout, summary.duration,
    latency:percentile(50), latency:percentile(99)))
end
