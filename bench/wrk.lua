-- wrk script for the backhook benchmarks, configured by BENCH_* variables.
--
-- BENCH_MODE=webhook: POST varied progress webhooks. Backup n (1..BENCH_BACKUP_IDS)
--   belongs to site n % BENCH_SITES, whose domain is site<k>.bench.test, so the
--   bodies spread over every site and backup id. Header x-wpfort-token: BENCH_TOKEN.
-- BENCH_MODE=paths: GET the paths listed in BENCH_PATHS_FILE (one per line), at
--   random, with "Authorization: Bearer BENCH_API_KEY", or with BENCH_COOKIE as the
--   Cookie header when it is set (the dashboard's pages, signed in).
-- done() prints one line "WRKJSON {...}" that bench/common.py parses.

local mode = os.getenv("BENCH_MODE") or "webhook"
local token = os.getenv("BENCH_TOKEN") or ""
local sites = tonumber(os.getenv("BENCH_SITES") or "50")
local backup_ids = tonumber(os.getenv("BENCH_BACKUP_IDS") or "2000")
local webhook_path = os.getenv("BENCH_PATH") or "/webhooks/backup-progress"
local api_key = os.getenv("BENCH_API_KEY") or ""
local cookie = os.getenv("BENCH_COOKIE")
local paths = {}

local thread_number = 0
function setup(thread)
  thread_number = thread_number + 1
  thread:set("thread_number", thread_number)
end

function init(args)
  math.randomseed(os.time() * 1000 + (thread_number or 0))
  if mode == "paths" then
    for line in io.lines(os.getenv("BENCH_PATHS_FILE")) do
      paths[#paths + 1] = line
    end
  end
end

function request()
  if mode == "paths" then
    local headers = {["Authorization"] = "Bearer " .. api_key}
    if cookie then headers = {["Cookie"] = cookie} end
    return wrk.format("GET", paths[math.random(#paths)], headers)
  end
  local n = math.random(backup_ids)
  local body = string.format(
    '{"domain":"site%d.bench.test","backup_id":"bk-%d","progress":%d.%d,"status":"in_progress"}',
    n % sites, n, math.random(0, 99), math.random(0, 9))
  return wrk.format("POST", webhook_path,
    {["Content-Type"] = "application/json", ["x-wpfort-token"] = token}, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,' ..
    '"status":%d,"timeout":%d,"p50_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
