-- jobgate dead letters: a queue's side of a job that ran out of attempts.
--
-- Loaded unchanged by the worker SDK (Python, `bury`) and the gateway's
-- store (Rust, `requeue`, `remove`). Every call touches keys of one queue,
-- which share the queue's hash tag, so it runs on Redis Cluster too:
--
--   KEYS[1]  dead letters   <prefix>dead:{<queue>}        (stream)
--   KEYS[2]  their index    <prefix>dead:{<queue>}:jobs   (hash: job id -> dead-letter entry id)
--   KEYS[3]  a band stream  <prefix>queue:{<queue>}:<band> (bury: the entry's; requeue: where it goes)
--   ARGV[1]  operation name; the remaining ARGV depend on the operation.
--
-- The index makes a dead letter unique per job: burying a job already
-- buried only acknowledges the entry, so two workers that both see the job
-- run out of attempts (one by `retry`, one by reclaiming its entry) leave
-- one dead letter.

local op = ARGV[1]
local dead_key = KEYS[1]
local index_key = KEYS[2]
local band_key = KEYS[3]

-- bury: group job_id entry_id field value [field value ...]
-- Adds the dead letter (unless the job has one) and acknowledges and
-- deletes the queue entry, in one step. Reply: {'ok'|'exists', dead_letter_id}.
local function bury()
  local group, job_id, entry_id = ARGV[2], ARGV[3], ARGV[4]
  local existing = redis.call('HGET', index_key, job_id)
  local status, id = 'exists', existing
  if not existing then
    id = redis.call('XADD', dead_key, '*', unpack(ARGV, 5))
    redis.call('HSET', index_key, job_id, id)
    status = 'ok'
  end
  redis.call('XACK', band_key, group, entry_id)
  redis.call('XDEL', band_key, entry_id)
  return { status, id }
end

-- requeue: job_id field value [field value ...]
-- The job was revived (jobgate.lua `revive`): add its queue entry and
-- remove its dead letter, in one step, only if the dead letter is still
-- there — so of two operators re-running the same job, one enqueues it.
-- Reply: {'ok', entry_id} or {'missing'}.
local function requeue()
  local job_id = ARGV[2]
  local id = redis.call('HGET', index_key, job_id)
  if not id then return { 'missing' } end
  local entry_id = redis.call('XADD', band_key, '*', unpack(ARGV, 3))
  redis.call('XDEL', dead_key, id)
  redis.call('HDEL', index_key, job_id)
  return { 'ok', entry_id }
end

-- remove: job_id — purge one job's dead letter. Reply: {'ok'} or {'missing'}.
local function remove()
  local id = redis.call('HGET', index_key, ARGV[2])
  if not id then return { 'missing' } end
  redis.call('XDEL', dead_key, id)
  redis.call('HDEL', index_key, ARGV[2])
  return { 'ok' }
end

local operations = { bury = bury, requeue = requeue, remove = remove }
local run = operations[op]
if run == nil then
  return redis.error_reply('ERR jobgate: unknown dead-letter operation ' .. tostring(op))
end
return run()
