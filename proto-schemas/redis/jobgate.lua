-- jobgate job state machine: the one place where a job's state changes.
--
-- Loaded unchanged by the gateway (Rust) and the worker SDK (Python) and run
-- with EVALSHA. Every call touches exactly two keys that share the job's hash
-- tag, so it runs on Redis Cluster too:
--
--   KEYS[1]  job record     <prefix>job:{<job_id>}      (hash)
--   KEYS[2]  event history  <prefix>events:{<job_id>}   (stream, entry id "<seq>-0")
--   ARGV[1]  operation name; the remaining ARGV depend on the operation.
--
-- Each state change does, atomically: update the job hash, append one event
-- to the history stream, and SPUBLISH the same event JSON to
--   <prefix>live:job:{<job_id>}    (watchers of the job)
-- a sharded channel in the job's own slot, so on Redis Cluster the message
-- goes to the job's shard only. Cancelling a running job also SPUBLISHes
-- `cancel` to <prefix>control:{<job_id>}. Nothing is published to a channel
-- outside the job's slot (the owner feed and the outcome counters are kept
-- by the gateway and the workers, on the owner's and the queue's tags).
--
-- Epochs: Redis replicates asynchronously, so a failover (or a restart
-- from an older append-only file) can lose writes that were acknowledged
-- and published, and hand their `seq` out again. Every write records the
-- `master_replid` it ran under; the first write of a job under another
-- replication id starts a new epoch (`epoch` + 1, `epoch_seq` = that
-- write's seq). Events carry their epoch; a job's events are ordered by
-- (epoch, seq), and a consumer that sees a higher epoch knows that the
-- events it holds from seq `epoch_seq` on belong to a lost past.
--
-- Replies are arrays whose first element is a status word:
--   {'ok', ...}        the change was made (details per operation)
--   {'skip', status}   the job is already terminal: nothing changed
--   {'stale', status}  the caller's attempt is not the job's current attempt
--                      (its lease was taken over): nothing changed
--   {'missing'}        no such job (never created, or expired)
--   {'exists', status} create: the id is taken
--   {'requested'}      cancel of a running job: the worker is asked to stop
--   {'failed', seq}    retry: no attempts were left, the job failed instead
--
-- Statuses: queued -> running -> completed | failed | cancelled, and
-- running -> queued again through a `retrying` event (as does failed ->
-- queued, when an operator re-runs a dead letter: `revive`).

local op = ARGV[1]
local job_key = KEYS[1]
local events_key = KEYS[2]
local at = string.find(job_key, 'job:{', 1, true)
local prefix = at and string.sub(job_key, 1, at - 1)
-- Redis's clock, read once per call (a batch's operations share one
-- instant), in ms and as the text written to records (numbers handed to
-- redis.call are formatted as floats on every use; the text is formatted once).
local now
local now_text
-- The arguments of the operation being run: ARGV, or one call's of a batch.
local args = ARGV
if prefix == nil then
  return redis.error_reply('ERR jobgate: KEYS[1] is not a job key: ' .. job_key)
end

local function now_ms()
  if now == nil then
    local t = redis.call('TIME')
    now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    now_text = string.format('%d', now)
  end
  return now
end

local function is_terminal(status)
  return status == 'completed' or status == 'failed' or status == 'cancelled'
end

-- The replication id of the node running this call (read once per call).
local replid_now
local function current_replid()
  if replid_now == nil then
    replid_now = string.match(redis.call('INFO', 'replication'), 'master_replid:(%w+)') or ''
  end
  return replid_now
end

-- Append event `seq` to the history, publish it, and return its JSON.
-- `data` must already be a JSON text; it is embedded verbatim so that numbers
-- in results keep their exact spelling.
local function emit(job, seq, event, data, now)
  local json = string.format(
    '{"type":"event","job_id":%s,"seq":%d,"epoch":%d,"event":"%s","data":%s,"ts":%d,"trace_id":"%s"}',
    cjson.encode(job.job_id), seq, job.epoch, event, data, now, job.trace_id)
  redis.call('XADD', events_key, 'MAXLEN', job.history_max, string.format('%d-0', seq), 'e', json)
  redis.call('SPUBLISH', prefix .. 'live:job:{' .. job.job_id .. '}', json)
  return json
end

-- One state change: set the job's fields (`...`, name-value pairs) together
-- with the event's seq and updated_at in one HSET, then emit the event.
-- The hash's `seq` is the last event's. Returns the new seq.
local function change(job, event, data, now, ...)
  local seq = (tonumber(job.seq) or 0) + 1
  local seq_text = string.format('%d', seq)
  local fields = { 'seq', seq_text, 'updated_at', now_text, ... }
  local epoch = tonumber(job.epoch) or 1
  local replid = current_replid()
  if job.replid ~= replid then
    fields[#fields + 1] = 'replid'
    fields[#fields + 1] = replid
    -- A record written before epochs existed has no replid: it keeps epoch 1.
    if job.replid then
      epoch = epoch + 1
      fields[#fields + 1] = 'epoch'
      fields[#fields + 1] = epoch
      fields[#fields + 1] = 'epoch_seq'
      fields[#fields + 1] = seq
    end
  end
  job.seq = seq
  job.epoch = epoch
  job.replid = replid
  redis.call('HSET', job_key, unpack(fields))
  emit(job, seq, event, data, now)
  return seq
end

-- Reads `fields` of the job, and always its epoch and replication id.
local function load(fields)
  local values = redis.call('HMGET', job_key, 'epoch', 'replid', unpack(fields))
  local job = { epoch = values[1], replid = values[2] }
  for i, name in ipairs(fields) do job[name] = values[i + 2] end
  return job
end

local common = { 'job_id', 'owner', 'trace_id', 'status', 'attempt', 'max_attempts',
                 'retention_s', 'history_max', 'kind', 'created_at', 'seq' }

-- Terminal jobs keep their record and history for `retention_s`, then expire.
local function expire_later(job)
  local retention = tonumber(job.retention_s) or 86400
  redis.call('EXPIRE', job_key, retention)
  redis.call('EXPIRE', events_key, retention)
end

-- create: job_id owner kind queue params_json priority max_attempts timeout_s
--         retention_s history_max traceparent tracestate trace_id [legacy_trace_id
--         [delay_ms run_at]]
-- legacy_trace_id, the old API's free-form trace id, is optional: absent or
-- empty, the record gets no legacy_trace_id field.
-- delay_ms / run_at (either may be empty) make a delayed job: it is due at
-- run_at, or delay_ms after now by Redis's clock. A due time later than now
-- is kept in the record's run_at and the queued event's data, and returned
-- as the reply's fourth element (the caller then adds the job to the queue's
-- delayed set instead of its stream); otherwise the job is an ordinary one.
-- The job's arguments are args[o + 1] .. args[o + 16] (o = 1 for `create`).
local function create_job(o)
  if redis.call('EXISTS', job_key) == 1 then
    return { 'exists', redis.call('HGET', job_key, 'status') }
  end
  local now = now_ms()
  local job = {
    job_id = args[o + 1], owner = args[o + 2], kind = args[o + 3], queue = args[o + 4],
    params = args[o + 5], priority = args[o + 6], max_attempts = args[o + 7],
    timeout_s = args[o + 8], retention_s = args[o + 9], history_max = args[o + 10],
    traceparent = args[o + 11], tracestate = args[o + 12], trace_id = args[o + 13],
    created_at = now, epoch = 1,
  }
  redis.call('HSET', job_key,
    'job_id', job.job_id, 'owner', job.owner, 'kind', job.kind, 'queue', job.queue,
    'params', job.params, 'priority', job.priority, 'max_attempts', job.max_attempts,
    'timeout_s', job.timeout_s, 'retention_s', job.retention_s,
    'history_max', job.history_max, 'traceparent', job.traceparent,
    'tracestate', job.tracestate, 'trace_id', job.trace_id,
    'status', 'queued', 'attempt', '0', 'seq', '1', 'created_at', now_text, 'updated_at', now_text,
    'epoch', '1', 'epoch_seq', '1', 'replid', current_replid())
  local legacy_trace_id = args[o + 14]
  if legacy_trace_id ~= nil and legacy_trace_id ~= '' then
    redis.call('HSET', job_key, 'legacy_trace_id', legacy_trace_id)
  end
  local run_at = tonumber(args[o + 16] or '')
  if run_at == nil and tonumber(args[o + 15] or '') then run_at = now + tonumber(args[o + 15]) end
  if run_at ~= nil and run_at > now then
    redis.call('HSET', job_key, 'run_at', run_at)
    local data = string.format('{"kind":%s,"queue":%s,"priority":%d,"run_at":%d}',
      cjson.encode(job.kind), cjson.encode(job.queue), tonumber(job.priority), run_at)
    return { 'ok', 1, emit(job, 1, 'queued', data, now), run_at }
  end
  local data = string.format('{"kind":%s,"queue":%s,"priority":%d}',
    cjson.encode(job.kind), cjson.encode(job.queue), tonumber(job.priority))
  return { 'ok', 1, emit(job, 1, 'queued', data, now) }
end

local function create()
  return create_job(1)
end

-- The calls that work on several jobs (create_many, submit_many, batch)
-- name each job's record and history in turn as KEYS[2i-1], KEYS[2i]:
-- this points the operations at job i's.
local function of_job(i)
  job_key = KEYS[2 * i - 1]
  events_key = KEYS[2 * i]
end

-- create_many: n, then n times create's 16 arguments (the optional ones
-- given, empty when unused). KEYS are each job's record and history in
-- turn: KEYS[2i-1], KEYS[2i] for job i. Each job is created exactly as
-- `create` would, one after the other in this one atomic call; on Redis
-- Cluster every key must be in one slot, so the caller groups jobs whose
-- tags share a slot (most often one job per call). Saves, per job, a call's
-- parsing and this script's set-up (and the replication id is read once).
-- Reply: {'ok', reply_1, ..., reply_n}, each reply as `create`'s.
local function create_many()
  local n = tonumber(ARGV[2])
  if n == nil or #KEYS ~= 2 * n or #ARGV ~= 2 + 16 * n then
    return redis.error_reply('ERR jobgate: create_many wants n, 2n keys and 16n arguments')
  end
  local replies = { 'ok' }
  for i = 1, n do
    of_job(i)
    replies[i + 1] = create_job(2 + 16 * (i - 1))
  end
  return replies
end

-- submit_many: a whole submission on a single server (not a cluster: the
-- keys below are in many slots), in one atomic call instead of three steps.
--   ARGV: n, m, limit, rate_expire_s, now_ms, retention_ms, index_max, then
--         for each owner j = 1..m: its channel; then for each job i = 1..n:
--         its owner's number j, its target t, its delayed member (JSON),
--         then create's 16 arguments.
--   KEYS: job_i, events_i for each job (2n), then rate_j, index_j for each
--         owner (2m), then pairs of a band stream and its queue's delayed
--         set: a job's target t is its pair's first key, counted from 1
--         within this part.
-- For each owner with limit > 0: INCRBY rate_j by its jobs in this call and
-- EXPIRE it; its jobs past `limit`, in order, are refused ({'rate_limited'})
-- and change nothing else. Each other job is created exactly as `create`
-- would; a created job is then added to its band stream (XADD … job_id kind
-- traceparent tracestate enqueued_at), or, due later, to the queue's delayed
-- set (ZADD due member). Then each owner's new
-- ids are added to its index (ZADD now_ms), the index is trimmed (older
-- than retention_ms, beyond the newest index_max) and expires retention_ms
-- after this write, and each id is published on the owner's channel, after
-- the ZADD. Reply: {'ok', reply_1, ..., reply_n}, each as `create`'s or
-- {'rate_limited'}.
local function submit_many()
  local n, m = tonumber(ARGV[2]), tonumber(ARGV[3])
  local per_job = 3 + 16
  local head = 8 + m
  if n == nil or m == nil or #ARGV ~= head + per_job * n or #KEYS < 2 * n + 2 * m then
    return redis.error_reply('ERR jobgate: submit_many wants n, m, 2n + 2m keys and its arguments')
  end
  local limit, rate_expire = tonumber(ARGV[4]), ARGV[5]
  local enqueued_at, retention_ms, index_max = ARGV[6], tonumber(ARGV[7]), tonumber(ARGV[8])
  local targets = 2 * n + 2 * m
  -- Rates: how many of each owner's jobs (in order) fit.
  local counts, fit = {}, {}
  for i = 1, n do
    local j = tonumber(ARGV[head + per_job * (i - 1) + 1])
    counts[j] = (counts[j] or 0) + 1
  end
  for j = 1, m do
    if limit > 0 and counts[j] then
      local rate_key = KEYS[2 * n + 2 * j - 1]
      local total = redis.call('INCRBY', rate_key, counts[j])
      redis.call('EXPIRE', rate_key, rate_expire)
      fit[j] = limit - (total - counts[j])
    else
      fit[j] = counts[j] or 0
    end
  end
  local replies, seen, added = { 'ok' }, {}, {}
  for i = 1, n do
    local o = head + per_job * (i - 1)
    local j, stream = tonumber(ARGV[o + 1]), tonumber(ARGV[o + 2])
    seen[j] = (seen[j] or 0) + 1
    if seen[j] > fit[j] then
      replies[i + 1] = { 'rate_limited' }
    else
      of_job(i)
      local c = o + 3
      local reply = create_job(c)
      if reply[1] == 'ok' then
        if reply[4] then
          redis.call('ZADD', KEYS[targets + stream + 1], reply[4], ARGV[o + 3])
        else
          redis.call('XADD', KEYS[targets + stream], '*', 'job_id', ARGV[c + 1],
            'kind', ARGV[c + 3], 'traceparent', ARGV[c + 11], 'tracestate', ARGV[c + 12],
            'enqueued_at', enqueued_at)
        end
        added[j] = added[j] or {}
        added[j][#added[j] + 1] = ARGV[c + 1]
      end
      replies[i + 1] = reply
    end
  end
  for j = 1, m do
    local ids = added[j]
    if ids then
      local index_key = KEYS[2 * n + 2 * j]
      local members = {}
      for _, id in ipairs(ids) do
        members[#members + 1] = enqueued_at
        members[#members + 1] = id
      end
      redis.call('ZADD', index_key, unpack(members))
      redis.call('ZREMRANGEBYSCORE', index_key, '-inf', '(' .. (tonumber(enqueued_at) - retention_ms))
      redis.call('ZREMRANGEBYRANK', index_key, 0, -index_max - 1)
      redis.call('PEXPIRE', index_key, retention_ms)
      local channel = ARGV[8 + j]
      for _, id in ipairs(ids) do redis.call('SPUBLISH', channel, id) end
    end
  end
  return replies
end

-- start: worker_name
-- A queued job becomes running with attempt + 1. A job found `running` is
-- one whose previous attempt was lost (its worker died and the entry was
-- reclaimed): that attempt is recorded as `retrying`, then the new one starts,
-- unless max_attempts is used up, in which case the job fails.
-- Reply: {'ok', attempt, kind, params, timeout_s, max_attempts, traceparent,
--         tracestate, trace_id, owner, created_at, queue} or {'skip'|'missing', ...}.
local function start()
  local job = load({ 'job_id', 'owner', 'trace_id', 'status', 'attempt', 'max_attempts',
                     'retention_s', 'history_max', 'kind', 'created_at', 'params', 'timeout_s',
                     'traceparent', 'tracestate', 'cancel_requested', 'seq', 'queue' })
  if job.status == false then return { 'missing' } end
  if is_terminal(job.status) then return { 'skip', job.status } end
  local now = now_ms()
  local attempt = tonumber(job.attempt)
  local max_attempts = tonumber(job.max_attempts)
  if job.cancel_requested == '1' then
    change(job, 'cancelled', '{"reason":"requested"}', now, 'status', 'cancelled', 'finished_at', now_text)
    expire_later(job)
    return { 'skip', 'cancelled' }
  end
  if job.status == 'running' then
    if attempt >= max_attempts then
      local err = cjson.encode({ code = 'max_attempts_exceeded',
        message = string.format('the job was attempted %d times and its last attempt was lost', attempt) })
      change(job, 'failed', string.format('{"attempt":%d,"error":%s}', attempt, err), now,
        'status', 'failed', 'error', err, 'finished_at', now_text)
      expire_later(job)
      return { 'skip', 'failed' }
    end
    change(job, 'retrying', string.format(
      '{"attempt":%d,"next_attempt":%d,"error":{"code":"attempt_lost","message":"the worker running this attempt stopped responding"}}',
      attempt, attempt + 1), now)
  end
  attempt = attempt + 1
  change(job, 'started', string.format('{"attempt":%d,"worker":%s}', attempt, cjson.encode(args[2])),
    now, 'status', 'running', 'attempt', attempt, 'worker', args[2], 'started_at', now_text)
  return { 'ok', attempt, job.kind, job.params, job.timeout_s, job.max_attempts,
           job.traceparent, job.tracestate, job.trace_id, job.owner, job.created_at, job.queue }
end

-- Load the job for a change made by the worker running `attempt` (args[2]):
-- returns the job, or the reply to give when the change must not happen.
local function guarded()
  local job = load(common)
  if job.status == false then return nil, { 'missing' } end
  if is_terminal(job.status) then return nil, { 'skip', job.status } end
  if job.status ~= 'running' or job.attempt ~= args[2] then
    return nil, { 'stale', job.status }
  end
  return job, nil
end

-- progress: attempt progress_json   (progress_json = {"done":..,"total":..,"message"?:..})
local function progress()
  local job, reply = guarded()
  if job == nil then return reply end
  local now = now_ms()
  local seq = change(job, 'progress', args[3], now, 'progress', args[3])
  return { 'ok', seq }
end

-- complete: attempt result_json
local function complete()
  local job, reply = guarded()
  if job == nil then return reply end
  local now = now_ms()
  local seq = change(job, 'completed', '{"result":' .. args[3] .. '}', now,
    'status', 'completed', 'result', args[3], 'finished_at', now_text)
  expire_later(job)
  return { 'ok', seq }
end

-- fail: attempt code message
-- attempt "*" fails the job whatever its attempt (used by the gateway when
-- enqueueing failed after the record was written).
local function fail()
  local job, reply
  if args[2] == '*' then
    job = load(common)
    if job.status == false then return { 'missing' } end
    if is_terminal(job.status) then return { 'skip', job.status } end
  else
    job, reply = guarded()
    if job == nil then return reply end
  end
  local now = now_ms()
  local err = cjson.encode({ code = args[3], message = args[4] })
  local seq = change(job, 'failed',
    string.format('{"attempt":%d,"error":%s}', tonumber(job.attempt), err), now,
    'status', 'failed', 'error', err, 'finished_at', now_text)
  expire_later(job)
  return { 'ok', seq }
end

-- retry: attempt code message delay_ms
-- The running attempt failed with a retryable error. With attempts left the
-- job goes back to `queued` (the worker re-enqueues it after delay_ms);
-- without, it fails with max_attempts_exceeded.
local function retry()
  local job, reply = guarded()
  if job == nil then return reply end
  local now = now_ms()
  local attempt = tonumber(job.attempt)
  local err = cjson.encode({ code = args[3], message = args[4] })
  if attempt >= tonumber(job.max_attempts) then
    local final = cjson.encode({ code = 'max_attempts_exceeded',
      message = string.format('attempt %d of %d failed: %s', attempt, tonumber(job.max_attempts), args[4]) })
    local seq = change(job, 'failed', string.format('{"attempt":%d,"error":%s}', attempt, final),
      now, 'status', 'failed', 'error', final, 'finished_at', now_text)
    expire_later(job)
    return { 'failed', seq }
  end
  local seq = change(job, 'retrying', string.format(
    '{"attempt":%d,"next_attempt":%d,"delay_ms":%d,"error":%s}',
    attempt, attempt + 1, tonumber(args[5]), err), now, 'status', 'queued', 'error', err)
  return { 'ok', seq }
end

-- cancel: (no arguments) — asked by a client.
-- A queued job ends `cancelled` at once (a worker that later reads its entry
-- skips it); a running one is flagged and its worker stops it.
-- Reply: {'ok', seq, kind, queue, created_at} (the caller counts the
-- outcome) or {'requested'} or {'skip', status} or {'missing'}.
local function cancel()
  local job = load({ 'job_id', 'owner', 'trace_id', 'status', 'attempt', 'max_attempts',
                     'retention_s', 'history_max', 'kind', 'created_at', 'seq', 'queue' })
  if job.status == false then return { 'missing' } end
  if is_terminal(job.status) then return { 'skip', job.status } end
  local now = now_ms()
  if job.status == 'running' then
    redis.call('HSET', job_key, 'cancel_requested', '1', 'updated_at', now)
    redis.call('SPUBLISH', prefix .. 'control:{' .. job.job_id .. '}', 'cancel')
    return { 'requested' }
  end
  local seq = change(job, 'cancelled', '{"reason":"requested"}', now,
    'status', 'cancelled', 'cancel_requested', '1', 'finished_at', now_text)
  expire_later(job)
  return { 'ok', seq, job.kind, job.queue, job.created_at }
end

-- cancelled: attempt — the worker stopped a running job on request.
local function cancelled()
  local job, reply = guarded()
  if job == nil then return reply end
  local now = now_ms()
  local seq = change(job, 'cancelled',
    string.format('{"reason":"requested","attempt":%d}', tonumber(job.attempt)), now,
    'status', 'cancelled', 'finished_at', now_text)
  expire_later(job)
  return { 'ok', seq }
end

-- release: attempt — a worker shutting down gives back a job it could not
-- finish. The attempt is not charged: the job goes back to `queued` with
-- its attempt count as before it started, and the next start reuses the
-- number. The worker then re-enqueues the entry.
local function release()
  local job, reply = guarded()
  if job == nil then return reply end
  local now = now_ms()
  local attempt = tonumber(job.attempt)
  local seq = change(job, 'retrying', string.format(
    '{"attempt":%d,"next_attempt":%d,"error":{"code":"worker_shutdown","message":"the worker stopped before the attempt finished; it is not counted"}}',
    attempt, attempt), now, 'status', 'queued', 'attempt', attempt - 1)
  return { 'ok', seq }
end

-- revive: requested_by — an operator re-runs a failed job from the dead
-- letters. The job goes back to `queued` with a fresh attempt budget (as
-- many attempts as it was submitted with: `attempt_base` records the
-- attempts made before the current budget), a `retrying` event saying who
-- asked, and no expiry (queued jobs do not expire). The caller then
-- enqueues the entry and removes the dead letter (`dead_letters.lua`
-- `requeue`). A job found `queued` is one whose earlier revive was not
-- followed by the enqueue: it is answered as such, so the caller enqueues.
-- Reply: {'ok'|'queued', kind, queue, priority, traceparent, tracestate}
--        or {'skip', status} or {'missing'}.
local function revive()
  local job = load({ 'job_id', 'owner', 'trace_id', 'status', 'attempt', 'max_attempts',
                     'retention_s', 'history_max', 'kind', 'created_at', 'seq', 'queue',
                     'priority', 'traceparent', 'tracestate', 'attempt_base' })
  if job.status == false then return { 'missing' } end
  local reply = { job.kind, job.queue, job.priority, job.traceparent or '', job.tracestate or '' }
  if job.status == 'queued' then return { 'queued', unpack(reply) } end
  if job.status ~= 'failed' then return { 'skip', job.status } end
  local now = now_ms()
  local attempt = tonumber(job.attempt)
  local budget = tonumber(job.max_attempts) - (tonumber(job.attempt_base) or 0)
  if budget < 1 then budget = 1 end
  local data = string.format(
    '{"attempt":%d,"next_attempt":%d,"requested_by":%s,"error":{"code":"dead_letter_retry","message":"re-run from the dead letters"}}',
    attempt, attempt + 1, cjson.encode(args[2]))
  change(job, 'retrying', data, now, 'status', 'queued', 'attempt_base', attempt,
    'max_attempts', attempt + budget)
  redis.call('HDEL', job_key, 'finished_at', 'cancel_requested')
  redis.call('PERSIST', job_key)
  redis.call('PERSIST', events_key)
  return { 'ok', unpack(reply) }
end

local operations = {
  create = create, start = start, progress = progress, complete = complete,
  fail = fail, retry = retry, cancel = cancel, cancelled = cancelled, release = release,
  revive = revive,
}

-- batch: n, then n calls, each as its operation's name, its argument count
-- and its arguments (what would follow the name in ARGV on its own). KEYS
-- are each call's job record and history in turn: KEYS[2i-1], KEYS[2i] for
-- call i. The calls run one after the other in this one atomic call, each
-- exactly as it would on its own (a batch cannot hold `create_many` or
-- another batch); on Redis Cluster every key must be in one slot. The
-- whole batch is checked before any call runs: a malformed one changes
-- nothing. Saves, per call, a call's parsing, this script's set-up and
-- the reads of the clock and the replication id.
-- Reply: {'ok', reply_1, ..., reply_n}, each reply as its operation's.
local function batch()
  local n = tonumber(ARGV[2])
  if n == nil or n < 1 or #KEYS ~= 2 * n then
    return redis.error_reply('ERR jobgate: batch wants n >= 1 and 2n keys')
  end
  local calls = {}
  local at = 3
  for i = 1, n do
    local name, argc = ARGV[at], tonumber(ARGV[at + 1])
    if operations[name] == nil or argc == nil or argc < 0 or at + 1 + argc > #ARGV then
      return redis.error_reply(string.format('ERR jobgate: batch call %d is malformed', i))
    end
    local call = { name }
    for k = 1, argc do call[k + 1] = ARGV[at + 1 + k] end
    calls[i] = call
    at = at + 2 + argc
  end
  if at ~= #ARGV + 1 then
    return redis.error_reply('ERR jobgate: batch has arguments after its last call')
  end
  local replies = { 'ok' }
  for i = 1, n do
    of_job(i)
    args = calls[i]
    replies[i + 1] = operations[args[1]]()
  end
  return replies
end

local run = operations[op]
  or ({ create_many = create_many, submit_many = submit_many, batch = batch })[op]
if run == nil then
  return redis.error_reply('ERR jobgate: unknown operation ' .. tostring(op))
end
return run()
