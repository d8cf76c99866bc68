-- entitled's schema on PostgreSQL (`--db postgres://…`): the same tables, columns and
-- meanings as schema.sql (read that file for what each column holds); what differs is
-- said here. Times are the same RFC 3339 text as on SQLite ('2026-12-03T10:00:00.000000Z',
-- which sorts as it reads), so `psql` shows what `sqlite3` shows.
--
-- Version: the one row of `entitled_schema`. Every instance migrates at start under an
-- advisory lock (src/store/postgres/schema.rs), so two starting at once do not both
-- migrate. This file is version 2 (version 1 lacked push's two tables).
--
-- Followers: every row a writer inserts or updates carries `written_xid`, the writing
-- transaction's id. An instance applies other instances' changes to its memory by
-- reading the rows written by transactions below the oldest one still running
-- (`pg_snapshot_xmin`): those have all ended, so nothing committed out of order is
-- skipped and nothing uncommitted is read (src/store/postgres/follow.rs).

CREATE TABLE entitled_schema (
    id      integer PRIMARY KEY CHECK (id = 1),
    version integer NOT NULL
);
INSERT INTO entitled_schema (id, version) VALUES (1, 2);

CREATE TABLE events (
    seq              bigserial PRIMARY KEY,  -- arrival order; on PostgreSQL values commit
                                             -- out of order across transactions
    profile_event_id text NOT NULL,
    profile_id       text NOT NULL,
    customer_user_id text,
    event_type       text NOT NULL,
    canonical_type   text,
    event_datetime   text NOT NULL,
    received_at      text NOT NULL,
    environment      text,
    body             text NOT NULL
);
CREATE UNIQUE INDEX events_by_profile ON events (profile_id, profile_event_id);

CREATE TABLE profiles (
    profile_id             text PRIMARY KEY,
    customer_user_id       text,
    customer_user_id_at    text,
    customer_user_id_event text,
    written_xid            xid8 NOT NULL DEFAULT pg_current_xact_id()
);
CREATE INDEX profiles_by_customer_user_id ON profiles (customer_user_id)
    WHERE customer_user_id IS NOT NULL;
CREATE INDEX profiles_by_written_xid ON profiles (written_xid);

CREATE TABLE entitlements (
    profile_id        text NOT NULL,
    access_level_id   text NOT NULL,
    is_active         boolean NOT NULL,
    expires_at        text,
    starts_at         text,
    will_renew        boolean NOT NULL,
    is_lifetime       boolean NOT NULL,
    in_grace_period   boolean NOT NULL,
    is_refund         boolean NOT NULL,
    store             text,
    vendor_product_id text,
    environment       text,
    last_event_id     text NOT NULL,
    last_event_type   text NOT NULL,
    last_event_at     text NOT NULL,
    reported_active   boolean NOT NULL DEFAULT false,
    shared_from       text,
    sharing_group     text,
    written_xid       xid8 NOT NULL DEFAULT pg_current_xact_id(),
    PRIMARY KEY (profile_id, access_level_id)
);
CREATE INDEX entitlements_reported_by_expiry ON entitlements (expires_at)
    WHERE reported_active AND NOT is_lifetime AND expires_at IS NOT NULL;
CREATE INDEX entitlements_unreported_by_end ON entitlements (is_lifetime, expires_at)
    WHERE NOT reported_active AND is_active AND starts_at IS NOT NULL;
CREATE INDEX entitlements_by_written_xid ON entitlements (written_xid);

-- A level a rebuild removed from a profile: followers drop it from memory. Only a
-- rebuild (or migrate) removes a level, so the rows are few; they are kept.
CREATE TABLE entitlements_removed (
    profile_id      text NOT NULL,
    access_level_id text NOT NULL,
    written_xid     xid8 NOT NULL DEFAULT pg_current_xact_id()
);
CREATE INDEX entitlements_removed_by_written_xid ON entitlements_removed (written_xid);

CREATE TABLE sharing_links (
    access_level_id  text NOT NULL,
    profile_id       text NOT NULL,
    shared_with      text NOT NULL,
    profile_event_id text NOT NULL,
    PRIMARY KEY (profile_id, access_level_id, shared_with)
);

-- The change feed. `seq` is taken under one advisory lock held to COMMIT (the feed
-- lock), so on PostgreSQL too a reader that sees a `seq` has seen every smaller one.
CREATE TABLE access_changes (
    seq              bigserial PRIMARY KEY,
    profile_id       text NOT NULL,
    access_level_id  text NOT NULL,
    active           boolean NOT NULL,
    reason           text NOT NULL,
    profile_event_id text,
    expires_at       text,
    changed_at       text NOT NULL,
    customer_user_id text,
    shared_from      text
);

-- Push (--notify-url): the cursor every instance shares, and the changes parked after
-- --notify-retry-for. One instance delivers at a time: the one whose push connection
-- holds the delivery lock (src/store/postgres/notify.rs). Added by version 2.
CREATE TABLE notify_state (
    id            integer PRIMARY KEY CHECK (id = 1),
    delivered_seq bigint NOT NULL
);
CREATE TABLE notify_failed (
    seq             bigint PRIMARY KEY,
    attempts        bigint NOT NULL,
    first_failed_at text NOT NULL,
    last_failed_at  text NOT NULL,
    last_error      text NOT NULL
);

CREATE VIEW active_entitlements AS
SELECT e.profile_id,
       p.customer_user_id,
       e.access_level_id,
       e.expires_at,
       e.is_lifetime,
       e.will_renew,
       e.in_grace_period,
       e.store,
       e.vendor_product_id,
       e.environment,
       e.last_event_type,
       e.last_event_at,
       e.shared_from
FROM entitlements AS e
LEFT JOIN profiles AS p USING (profile_id)
WHERE e.is_active
  AND (e.is_lifetime OR e.expires_at IS NULL OR e.expires_at::timestamptz > now())
  AND (e.starts_at IS NULL OR e.starts_at::timestamptz <= now());
