-- wrk script of the load-testing kit (loadtests/wrkdriver.py fills in the two paths below).
-- Each thread cycles through the pool (one "path<TAB>token" line per slot), sends X-Request-Id: lt-<slot>,
-- and counts (slot, status) from the X-Request-Id echoed in each answer; an answer without it is
-- counted by status only ("unattributed"). done() gathers every thread's counts and wrk's latency
-- percentiles into one JSON file. Nothing here prints a token.

local pool_path = [==[@POOL@]==]
local out_path = [==[@OUT@]==]
local threads = {}
local thread_count = 0

function setup(thread)
   thread:set("id", thread_count)
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
   sent, tally = {}, {}
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
end

local function add_all(into, from)
   for k, v in pairs(from or {}) do into[k] = (into[k] or 0) + v end
end

function done(summary, latency, requests)
   local all_tally, all_sent = {}, {}
   for _, thread in ipairs(threads) do
      add_all(all_tally, thread:get("tally"))
      add_all(all_sent, thread:get("sent"))
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
   out:write('}, "tally": [')
   local sep = ""
   for key, n in pairs(all_tally) do
      out:write(string.format('%s[%d, %d]', sep, key, n))
      sep = ", "
   end
   out:write('], "sent": [')
   sep = ""
   for slot, n in pairs(all_sent) do
      out:write(string.format('%s[%d, %d]', sep, slot, n))
      sep = ", "
   end
   out:write(']}\n')
   out:close()
end
