-- wrk script for the benchmark: drives a forward proxy (or the origin directly), set up by bench/run.py
-- through environment variables.
--   BENCH_TARGET       request-target: the absolute URI for a proxy, the path for the origin itself
--   BENCH_HOST         Host header
--   BENCH_AUTH         Proxy-Authorization value (empty: none)
--   BENCH_CLOSE        "1": send Connection: close (a new connection per request)
--   BENCH_DIGEST_FILE  Digest: line 1 = the Proxy-Authorization value up to "nc=", line 2 = what follows
--                      the response digest, then one line per request: nc=...response="..." prepared in
--                      advance from one nonce with increasing nc
-- done() prints one line "BENCH_JSON {...}" that run.py reads.

local target = os.getenv("BENCH_TARGET")
local host = os.getenv("BENCH_HOST")
local auth = os.getenv("BENCH_AUTH") or ""
local close = os.getenv("BENCH_CLOSE") == "1"
local digest_file = os.getenv("BENCH_DIGEST_FILE") or ""

wrk.method = "GET"
wrk.path = target
wrk.headers["Host"] = host
if auth ~= "" then
  wrk.headers["Proxy-Authorization"] = auth
end
if close then
  wrk.headers["Connection"] = "close"
end

if digest_file ~= "" then
  local head, tail
  local parts = {}
  local n = 0
  local i = 0

  init = function(args)
    local f = assert(io.open(digest_file, "r"))
    local auth_head = f:read("*l")
    local auth_tail = f:read("*l")
    for line in f:lines() do
      n = n + 1
      parts[n] = line
    end
    f:close()
    head = "GET " .. target .. " HTTP/1.1\r\nHost: " .. host .. "\r\n"
    if close then
      head = head .. "Connection: close\r\n"
    end
    head = head .. "Proxy-Authorization: " .. auth_head
    tail = auth_tail .. "\r\n\r\n"
  end

  request = function()
    -- Past the prepared counts the last one is replayed: the proxy refuses it and run.py sees the errors.
    if i < n then
      i = i + 1
    end
    return head .. parts[i] .. tail
  end
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "bytes": %d, "connect_errors": %d, "read_errors": %d, '
      .. '"write_errors": %d, "status_errors": %d, "timeouts": %d, "p50_us": %d, "p99_us": %d, '
      .. '"mean_us": %.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.mean))
end
