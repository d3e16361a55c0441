-- wrk script of the load-testing kit (loadtests/wrkdriver.py fills in the @...@ values below).
-- Each thread cycles through the pool (one "path<TAB>token" line per slot), sends X-Request-Id: lt-<slot>,
-- and counts (slot, status) from the X-Request-Id echoed in each answer; an answer without it is
-- counted by status only ("unattributed"). Each thread also counts its answers per whole second of
-- the run (at most `seconds` buckets: a late answer goes into the last one). done() gathers every
-- thread's counts, the per-second counts and wrk's latency percentiles (a fine grid, for the chart)
-- into one JSON file. Nothing here prints a token.

local pool_path = [==[@POOL@]==]
local out_path = [==[@OUT@]==]
local seconds = @SECONDS@
local curve = @CURVE@                    -- the percentiles of the latency curve (report.CURVE_PERCENTILES)
local threads = {}
local thread_count = 0

-- A monotonic clock in seconds: clock_gettime through LuaJIT's ffi (wrk's Lua), else os.time().
local now = os.time
local has_ffi, ffi = pcall(require, "ffi")
if has_ffi then
   ffi.cdef("typedef struct { long tv_sec; long tv_nsec; } lt_timespec;"
            .. "int clock_gettime(int clock_id, lt_timespec *tp);")
   local ts = ffi.new("lt_timespec")
   now = function()
      ffi.C.clock_gettime(1, ts)   -- 1: CLOCK_MONOTONIC on Linux
      return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) / 1e9
   end
end
local run_started = now()   -- read in the main state just before wrk creates its threads

function setup(thread)
   thread:set("id", thread_count)
   thread:set("started", run_started)   -- one clock origin for every thread's buckets
   thread_count = thread_count + 1
   table.insert(threads, thread)
end

function init(args)
   requests = {}
   for line in io.lines(pool_path) do
      local path, token = line:match("^([^\t]*)\t(.*)$")
      local slot = #requests
      requests[slot + 1] = wrk.format("GET", path, {["Authorization"] = "Bearer " .. token,
                                                   ["X-Request-Id"] = "lt-" .. slot})
   end
   count = #requests
   next_slot = (id * 7919) % count        -- threads start at different places in the pool
   sent, tally, per_second = {}, {}, {}
end

function request()
   local slot = next_slot
   next_slot = (next_slot + 1) % count
   sent[slot] = (sent[slot] or 0) + 1
   return requests[slot + 1]
end

local function echoed_slot(headers)
   local value = headers["X-Request-Id"] or headers["x-request-id"] or headers["X-Request-ID"]
   if value == nil then
      for name, v in pairs(headers) do
         if string.lower(name) == "x-request-id" then value = v end
      end
   end
   if value == nil or value:sub(1, 3) ~= "lt-" then return nil end
   local slot = tonumber(value:sub(4))
   if slot == nil or slot < 0 or slot >= count or slot % 1 ~= 0 then return nil end
   return slot
end

function response(status, headers, body)
   local slot = echoed_slot(headers)
   local key = slot and (slot * 1000 + status) or -status
   tally[key] = (tally[key] or 0) + 1
   local second = math.min(math.max(math.floor(now() - started), 0), seconds - 1) + 1
   per_second[second] = (per_second[second] or 0) + 1
end

local function add_all(into, from)
   for k, v in pairs(from or {}) do into[k] = (into[k] or 0) + v end
end


-- Writes a table of integer keys and counts as JSON pairs: [k, n], [k, n] ...
local function write_pairs(out, counts)
   local sep = ""
   for key, n in pairs(counts) do
      out:write(string.format('%s[%d, %d]', sep, key, n))
      sep = ", "
   end
end

function done(summary, latency, requests)
   local all_tally, all_sent, all_per_second = {}, {}, {}
   for _, thread in ipairs(threads) do
      add_all(all_tally, thread:get("tally"))
      add_all(all_sent, thread:get("sent"))
      add_all(all_per_second, thread:get("per_second"))
   end
   local out = assert(io.open(out_path, "w"))
   local e = summary.errors
   out:write(string.format('{"duration_us": %d, "requests": %d, "bytes": %d, ', summary.duration,
                           summary.requests, summary.bytes))
   out:write(string.format('"errors": {"connect": %d, "read": %d, "write": %d, "timeout": %d, "status": %d}, ',
                           e.connect, e.read, e.write, e.timeout, e.status))
   out:write(string.format('"latency_us": {"min": %d, "mean": %f, "max": %d', latency.min, latency.mean, latency.max))
   for _, p in ipairs({50, 90, 99, 99.9}) do
      out:write(string.format(', "p%s": %d', tostring(p), latency:percentile(p)))
   end
   out:write('}, "latency_curve_us": [')
   local sep = ""
   for _, p in ipairs(curve) do
      out:write(string.format('%s[%s, %d]', sep, tostring(p), latency:percentile(p)))
      sep = ", "
   end
   out:write('], "per_second": [')
   for second = 1, seconds do
      out:write(string.format('%s%d', second > 1 and ", " or "", all_per_second[second] or 0))
   end
   out:write('], "tally": [')
   write_pairs(out, all_tally)
   out:write('], "sent": [')
   write_pairs(out, all_sent)
   out:write(']}\n')
   out:close()
end
