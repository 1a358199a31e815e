-- The ClickHouse reads of the API (explore.py), as named blocks loaded by core.load_queries.
-- Values are bound server-side ({name:Type}); the text never changes with the filters: each
-- filter is a condition that holds for every row when the filter is not given (an empty
-- array, a NULL time, an empty search string, written so that ClickHouse folds the condition
-- away and reads no column for it). A job's events are read through event_log's
-- `by_job` projection, sorted by (job_id, line_no): line events have line_no >= 1, a job's
-- lifecycle events 0. `$event_filters` stands for the block of that name (core.load_queries
-- puts it in): the filters every read shares.

-- name: event_filters --
(empty({levels:Array(String)}) OR has({levels:Array(String)}, level))
  AND (empty({services:Array(String)}) OR has({services:Array(String)}, service))
  AND (empty({event_types:Array(String)}) OR has({event_types:Array(String)}, event_type))
  AND (empty({environments:Array(String)}) OR has({environments:Array(String)}, environment))
  AND event_date_time >= coalesce({since:Nullable(DateTime('UTC'))}, toDateTime(0, 'UTC'))
  AND event_date_time < coalesce({until:Nullable(DateTime('UTC'))}, toDateTime(4294967295, 'UTC'))
  AND ({text:String} = '' OR positionCaseInsensitiveUTF8(toString(event_context.message), {text:String}) > 0)

-- name: job_events --
SELECT toString(event_id) AS event_id, event_type, event_date_time, environment,
       level, service,
       toString(event_context.message) AS message, toJSONString(event_context) AS event_json,
       line_no
FROM event_log
WHERE job_id = {job_id:UUID} AND line_no > {after_line:UInt64}
  AND $event_filters
ORDER BY line_no
LIMIT {limit:UInt32}

-- name: job_event_range --
-- The first and last event time and the count of the events the filters select.
SELECT min(event_date_time) AS first, max(event_date_time) AS last, count() AS events
FROM event_log
WHERE job_id = {job_id:UUID} AND line_no > 0
  AND $event_filters

-- name: job_histogram --
SELECT toStartOfInterval(event_date_time, toIntervalSecond({interval_s:UInt32})) AS start,
       level, count() AS events
FROM event_log
WHERE job_id = {job_id:UUID} AND line_no > 0
  AND $event_filters
GROUP BY start, level
ORDER BY start, level
