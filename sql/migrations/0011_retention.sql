-- Retention: how long an owner's jobs are kept, where an admin set it for that owner
-- (retention.py; `retention set`, PUT /api/v1/admin/owners/{owner}/retention). An owner
-- without a row keeps EH_RETENTION_DAYS; a row whose days is NULL keeps its jobs for ever,
-- whatever the default.
-- depends: 0009_compression

CREATE TABLE owner_retention (
    owner   text PRIMARY KEY CHECK (owner ~ '^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$'),
    days    integer CHECK (days BETWEEN 1 AND 36500),
    set_by  text NOT NULL,
    set_at  timestamptz NOT NULL DEFAULT now()
);
