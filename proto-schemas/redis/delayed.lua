-- jobgate delayed jobs: moves every due job of one queue from the queue's
-- delayed set into its band streams, atomically, so that gateways running
-- it at the same time never enqueue a job twice. Every key shares the
-- queue's hash tag, so it runs on Redis Cluster too:
--
--   KEYS[1]    <prefix>delayed:{<queue>}        (sorted set: member = the
--              queue entry as JSON {"job_id", "kind", "band", "traceparent",
--              "tracestate"}, score = run_at in ms, Redis's clock)
--   KEYS[2..4] <prefix>queue:{<queue>}:high|normal|low   (the band streams)
--   ARGV[1]    the most members to move in one call
--
-- Each due member becomes one entry of its band's stream (the fields every
-- queue entry has, `enqueued_at` = now) and leaves the set.
-- Reply: {moved, wait_ms}: how many were moved, and the ms until the next
-- member is due (0: some are due already), or -1 when the set is empty.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local bands = { high = KEYS[2], normal = KEYS[3], low = KEYS[4] }
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, member in ipairs(due) do
  local entry = cjson.decode(member)
  redis.call('XADD', bands[entry.band] or KEYS[3], '*', 'job_id', entry.job_id,
    'kind', entry.kind, 'traceparent', entry.traceparent or '',
    'tracestate', entry.tracestate or '', 'enqueued_at', now)
  redis.call('ZREM', KEYS[1], member)
end
local wait = -1
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if first[2] ~= nil then wait = math.max(tonumber(first[2]) - now, 0) end
return { #due, wait }
