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

-- name: search_scope --
-- Owner-wide search (search.py's search_*): an owner's line events across their jobs. This
-- block is whose events may be seen: the owner's, less the jobs Postgres says are deleted
-- while ClickHouse may still hold their events (search.search_scope). search.scoped puts it
-- (or audit_scope) in for `$scope`, and the keyset's tie-break column for `$tiebreak` (job_id
-- here: with line_no, it orders the events of one millisecond). The filters come in
-- three fragments: search_fields (fields' values), search_times (from/to to the millisecond)
-- and search_matches (text and context.<path>). ClickHouse picks what to read by the
-- conditions' columns: `by_owner` (owner, event_time) for most reads; the table itself where
-- the `context_tokens` skip index leaves fewer granules (a context filter's value, see
-- search_matches); and the `by_hour` aggregate for the *_by_hour queries, which leave out the
-- conditions `by_hour` cannot answer (search.by_hour says when they may be used).
owner = {owner:String} AND line_no > 0 AND NOT has({hidden:Array(UUID)}, job_id)

-- name: audit_scope --
-- A search of `audit.*` events (audit.py): those of the owner's own actions (its `owner` is
-- the actor), or everyone's for an admin. They have no job (job_id zero, line_no 0), so the
-- tie-break is the event's id; the sort key's event_type prefix prunes the rest.
startsWith(event_type, 'audit.') AND ({every_owner:UInt8} = 1 OR owner = {owner:String})

-- name: search_fields --
-- Each field's values OR together (none given: every value), then less its not.<field> values.
(empty({levels:Array(String)}) OR has({levels:Array(String)}, level))
  AND (empty({services:Array(String)}) OR has({services:Array(String)}, service))
  AND (empty({event_types:Array(String)}) OR has({event_types:Array(String)}, event_type))
  AND (empty({environments:Array(String)}) OR has({environments:Array(String)}, environment))
  AND (empty({job_ids:Array(UUID)}) OR has({job_ids:Array(UUID)}, job_id))
  AND (empty({not_levels:Array(String)}) OR NOT has({not_levels:Array(String)}, level))
  AND (empty({not_services:Array(String)}) OR NOT has({not_services:Array(String)}, service))
  AND (empty({not_event_types:Array(String)}) OR NOT has({not_event_types:Array(String)}, event_type))
  AND (empty({not_environments:Array(String)}) OR NOT has({not_environments:Array(String)}, environment))
  AND (empty({not_job_ids:Array(UUID)}) OR NOT has({not_job_ids:Array(UUID)}, job_id))

-- name: search_times --
event_time >= coalesce({since:Nullable(DateTime64(3, 'UTC'))}, toDateTime64(0, 3, 'UTC'))
  AND event_time < coalesce({until:Nullable(DateTime64(3, 'UTC'))}, toDateTime64('2106-02-07 06:28:16', 3, 'UTC'))

-- name: search_hours --
-- search_times for from/to on the hour (search.by_hour): the same condition, on the hour
-- `by_hour` keeps.
toStartOfHour(event_time) >= coalesce({since:Nullable(DateTime64(3, 'UTC'))}, toDateTime64(0, 3, 'UTC'))
  AND toStartOfHour(event_time) < coalesce({until:Nullable(DateTime64(3, 'UTC'))}, toDateTime64('2106-02-07 06:28:16', 3, 'UTC'))

-- name: search_matches --
-- context.<path> filters take CONTEXT_SLOTS fixed slots, an unused one a path of ''. A slot's
-- token ({ctN}, search.context_token: a word of the value, or '' for none) must also be a
-- token of the context's JSON text: a condition that holds whenever the value does, there so
-- that the table's `context_tokens` skip index can skip every granule without it.
({text:String} = '' OR positionCaseInsensitiveUTF8(toString(event_context.message), {text:String}) > 0)
  AND ({cp1:String} = '' OR (toString(getSubcolumn(event_context, concat('context.', {cp1:String}))) = {cv1:String}
       AND ({ct1:String} = '' OR hasToken(toJSONString(event_context.^context), {ct1:String}))))
  AND ({cp2:String} = '' OR (toString(getSubcolumn(event_context, concat('context.', {cp2:String}))) = {cv2:String}
       AND ({ct2:String} = '' OR hasToken(toJSONString(event_context.^context), {ct2:String}))))
  AND ({cp3:String} = '' OR (toString(getSubcolumn(event_context, concat('context.', {cp3:String}))) = {cv3:String}
       AND ({ct3:String} = '' OR hasToken(toJSONString(event_context.^context), {ct3:String}))))
  AND ({cp4:String} = '' OR (toString(getSubcolumn(event_context, concat('context.', {cp4:String}))) = {cv4:String}
       AND ({ct4:String} = '' OR hasToken(toJSONString(event_context.^context), {ct4:String}))))
  AND ({cp5:String} = '' OR (toString(getSubcolumn(event_context, concat('context.', {cp5:String}))) = {cv5:String}
       AND ({ct5:String} = '' OR hasToken(toJSONString(event_context.^context), {ct5:String}))))
  AND ({cp6:String} = '' OR (toString(getSubcolumn(event_context, concat('context.', {cp6:String}))) = {cv6:String}
       AND ({ct6:String} = '' OR hasToken(toJSONString(event_context.^context), {ct6:String}))))
  AND ({cp7:String} = '' OR (toString(getSubcolumn(event_context, concat('context.', {cp7:String}))) = {cv7:String}
       AND ({ct7:String} = '' OR hasToken(toJSONString(event_context.^context), {ct7:String}))))
  AND ({cp8:String} = '' OR (toString(getSubcolumn(event_context, concat('context.', {cp8:String}))) = {cv8:String}
       AND ({ct8:String} = '' OR hasToken(toJSONString(event_context.^context), {ct8:String}))))

-- name: search_columns --
-- What a search returns of an event, put in for `$columns` by explore.events_query: the
-- time as its RFC 3339 text (to the millisecond), the context as JSON text.
toString(event_id) AS event_id, toString(job_id) AS job, line_no,
concat(left(formatDateTime(event_time, '%Y-%m-%dT%H:%i:%S.%f', 'UTC'), 23), 'Z') AS timestamp,
level, service, event_type, environment, toString(event_context.message) AS message,
toJSONString(event_context.^context) AS context

-- name: export_ndjson_columns --
-- The same as an NDJSON export's lines (JSONEachRow): the API's event, written by ClickHouse.
toString(event_id) AS event_id, toString(job_id) AS job_id, line_no,
concat(left(formatDateTime(event_time, '%Y-%m-%dT%H:%i:%S.%f', 'UTC'), 23), 'Z') AS timestamp,
level, service, event_type, environment, toString(event_context.message) AS message,
event_context.^context AS context

-- name: search_events_desc --
-- Newest first; the page after (after_time, after_job, after_line), a keyset position (the
-- first page's is past every event). `event_time <=` lets the primary key prune, and so does
-- `event_time >=` the time of the limit-th event in time order alone (a scalar subquery,
-- known before the read is planned): ClickHouse reads in the order of a sort key's prefix
-- without stopping early, but reads `event_time` alone in order and stops.
SELECT $columns
FROM event_log
WHERE $scope AND $search_fields AND $search_times AND $search_matches
  AND event_time <= {after_time:DateTime64(3, 'UTC')}
  AND (event_time, $tiebreak, line_no) < ({after_time:DateTime64(3, 'UTC')}, {after_job:UUID}, {after_line:UInt64})
  AND event_time >= (
      SELECT min(t) FROM (
          SELECT event_time AS t
          FROM event_log
          WHERE $scope AND $search_fields AND $search_times AND $search_matches
            AND event_time <= {after_time:DateTime64(3, 'UTC')}
            AND (event_time, $tiebreak, line_no) < ({after_time:DateTime64(3, 'UTC')}, {after_job:UUID}, {after_line:UInt64})
          ORDER BY event_time DESC
          LIMIT {limit:UInt32}))
ORDER BY event_time DESC, $tiebreak DESC, line_no DESC
LIMIT {limit:UInt32}

-- name: search_events_asc --
SELECT $columns
FROM event_log
WHERE $scope AND $search_fields AND $search_times AND $search_matches
  AND event_time >= {after_time:DateTime64(3, 'UTC')}
  AND (event_time, $tiebreak, line_no) > ({after_time:DateTime64(3, 'UTC')}, {after_job:UUID}, {after_line:UInt64})
  AND event_time <= (
      SELECT max(t) FROM (
          SELECT event_time AS t
          FROM event_log
          WHERE $scope AND $search_fields AND $search_times AND $search_matches
            AND event_time >= {after_time:DateTime64(3, 'UTC')}
            AND (event_time, $tiebreak, line_no) > ({after_time:DateTime64(3, 'UTC')}, {after_job:UUID}, {after_line:UInt64})
          ORDER BY event_time
          LIMIT {limit:UInt32}))
ORDER BY event_time, $tiebreak, line_no
LIMIT {limit:UInt32}

-- name: search_first_time --
-- The first selected event's time (search.search_time), read in event_time's order.
SELECT event_time FROM event_log
WHERE $scope AND $search_fields AND $search_times AND $search_matches
ORDER BY event_time
LIMIT 1

-- name: search_last_time --
SELECT event_time FROM event_log
WHERE $scope AND $search_fields AND $search_times AND $search_matches
ORDER BY event_time DESC
LIMIT 1

-- name: search_histogram --
SELECT toStartOfInterval(event_time, toIntervalSecond({interval_s:UInt32})) AS start,
       level, count() AS events
FROM event_log
WHERE $scope AND $search_fields AND $search_times AND $search_matches
GROUP BY start, level
ORDER BY start, level

-- name: search_facet --
-- The top values of one field (facet_value: a fixed expression per field, explore.FACETS)
-- and the count of all the events that have one (`total`, for `other`).
SELECT value, events, sum(events) OVER () AS total
FROM (SELECT $facet_value AS value, count() AS events
      FROM event_log
      WHERE $scope AND $search_fields AND $search_times AND $search_matches
      GROUP BY value
      HAVING value IS NOT NULL)
ORDER BY events DESC, value
LIMIT {limit:UInt32}

-- name: search_histogram_by_hour --
-- search_histogram from `by_hour`, for an interval of whole hours.
SELECT toStartOfInterval(toStartOfHour(event_time), toIntervalSecond({interval_s:UInt32})) AS start,
       level, count() AS events
FROM event_log
WHERE $scope AND $search_fields AND $search_hours
GROUP BY start, level
ORDER BY start, level

-- name: search_facet_by_hour --
-- search_facet from `by_hour`, for a field it keeps.
SELECT value, events, sum(events) OVER () AS total
FROM (SELECT $facet_value AS value, count() AS events
      FROM event_log
      WHERE $scope AND $search_fields AND $search_hours
      GROUP BY value
      HAVING value IS NOT NULL)
ORDER BY events DESC, value
LIMIT {limit:UInt32}
