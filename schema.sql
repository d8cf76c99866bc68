-- entitled: the database schema, version 4.
--
-- This file is the one source of the schema: the daemon embeds it and runs it on an
-- empty file. Read it to find your way around `sqlite3 entitled.db` while the daemon
-- runs (WAL mode: your session never blocks ingestion, even a long read).
--
-- Times are TEXT in RFC 3339 UTC with exactly six fraction digits and a `Z`
-- (`2031-03-05T09:10:11.123456Z`): readable at the prompt, and sortable as text.
-- Booleans are INTEGER 0/1.
--
-- Try:
--   SELECT * FROM active_entitlements;
--   SELECT event_datetime, event_type, environment FROM events
--     WHERE profile_id = '…' ORDER BY event_datetime;
--   SELECT json_extract(body, '$.event_properties.vendor_product_id') FROM events LIMIT 5;
--   SELECT profile_id, access_level_id, shared_from, sharing_group FROM entitlements
--     WHERE sharing_group IS NOT NULL;        -- who shares paid access, and from whom
-- An event by its id: give its profile too (`WHERE profile_id = '…' AND
-- profile_event_id = '…'`); the id alone has no index and reads the whole table.

PRAGMA application_id = 1701737572; -- 0x656e7464, "entd": refuse foreign files
PRAGMA user_version = 4;            -- schema version; an older file is upgraded at start
                                    -- (src/store/mod.rs, `migrate`)

-- Every webhook event ever acknowledged, raw, exactly as received. Append-only: the
-- entitlements below are a function of this table and the configuration
-- (`--event-names`, `--product-levels`, `--sandbox`).
CREATE TABLE events (
    seq              INTEGER PRIMARY KEY,   -- arrival order (1, 2, 3, …)
    profile_event_id TEXT NOT NULL,         -- Adapty's id of the event; 'sha256:<hex of body>' when absent
    profile_id       TEXT NOT NULL,
    customer_user_id TEXT,                  -- as the event carried it (NULL when it had none)
    event_type       TEXT NOT NULL,         -- as received (may be a name renamed in Adapty's dashboard;
                                            -- 'access_level_updated' for a flat snapshot sent without one)
    canonical_type   TEXT,                  -- Adapty's canonical name; NULL when no name map knows it
    event_datetime   TEXT NOT NULL,         -- when Adapty says it happened: the projection's order
    received_at      TEXT NOT NULL,         -- when this daemon stored it
    environment      TEXT,                  -- 'Production', 'Sandbox', or NULL when absent
    body             TEXT NOT NULL          -- the request body, byte for byte
) STRICT;

-- A profile's events, and the dedup key. An event's id is unique and it never changes
-- profile, so (profile_id, profile_event_id) finds a re-sent event as the id alone
-- would, with one index where a unique id and a by-profile index were two: every
-- insert writes one random index page fewer (schema version 1 had both;
-- docs/performance.md#one-index-on-events).
CREATE UNIQUE INDEX events_by_profile ON events (profile_id, profile_event_id);

-- One row per profile ever seen, with the customer_user_id of its newest event that
-- carried one (a NULL never erases a known id).
CREATE TABLE profiles (
    profile_id          TEXT PRIMARY KEY,
    customer_user_id    TEXT,
    customer_user_id_at TEXT,               -- event_datetime of the event that set it
    customer_user_id_event TEXT             -- profile_event_id of that event (tie-break)
) STRICT, WITHOUT ROWID;

CREATE INDEX profiles_by_customer_user_id ON profiles (customer_user_id)
    WHERE customer_user_id IS NOT NULL;

-- The projection: one row per (profile, access level), the fold of that level's
-- events in order (event_datetime, then the tie-break in docs/access-rules.md, "How
-- access is decided"). `is_active` is what the newest event said; whether access holds *now*
-- also depends on the clock: see the view active_entitlements.
--
-- Shared access (Adapty's "Sharing paid access between user accounts", on by
-- default): profiles that an access_level_updated's `profiles_sharing_access_level`
-- linked form a sharing group for the level, and every member's row holds the same
-- state, the fold of all the members' events of the level. `sharing_group` names the
-- group (its smallest profile_id; NULL: alone); `shared_from` is the profile whose
-- events the state comes from when not the row's own (the holder of the purchase).
-- docs/access-rules.md, "Shared access", has the whole rule.
CREATE TABLE entitlements (
    profile_id        TEXT NOT NULL,
    access_level_id   TEXT NOT NULL,
    is_active         INTEGER NOT NULL,     -- granted by the newest event (before the clock)
    expires_at        TEXT,                 -- access ends here; NULL: no end (lifetime)
    starts_at         TEXT,                 -- access begins here; NULL: already began
    will_renew        INTEGER NOT NULL,
    is_lifetime       INTEGER NOT NULL,
    in_grace_period   INTEGER NOT NULL,
    is_refund         INTEGER NOT NULL,
    store             TEXT,
    vendor_product_id TEXT,
    environment       TEXT,
    last_event_id     TEXT NOT NULL,        -- profile_event_id of the newest event folded in
    last_event_type   TEXT NOT NULL,        -- its canonical type
    last_event_at     TEXT NOT NULL,        -- its event_datetime
    reported_active   INTEGER NOT NULL DEFAULT 0, -- what access_changes last said of it
    shared_from       TEXT,                 -- the profile the state comes from; NULL: its own
    sharing_group     TEXT,                 -- the sharing group (smallest member); NULL: alone
                                            -- (these two last: added by version 4)
    PRIMARY KEY (profile_id, access_level_id)
) STRICT, WITHOUT ROWID;

-- For the timer that reports expiries: the levels the feed calls active, by end.
CREATE INDEX entitlements_reported_by_expiry ON entitlements (expires_at)
    WHERE reported_active = 1 AND is_lifetime = 0 AND expires_at IS NOT NULL;
-- And the ones it calls inactive that have a start, by end: the timer reads those not
-- yet ended, so a level that started and ended with no event to say so (which stays
-- is_active = 1) is not read again at every tick for ever (version 1 keyed this on
-- starts_at, and did).
CREATE INDEX entitlements_unreported_by_end ON entitlements (is_lifetime, expires_at)
    WHERE reported_active = 0 AND is_active = 1 AND starts_at IS NOT NULL;

-- The members of a sharing group, for the writer: an event of one member rewrites
-- every member's row.
CREATE INDEX entitlements_by_sharing_group ON entitlements (access_level_id, sharing_group)
    WHERE sharing_group IS NOT NULL;

-- Every link a sharing declaration made, both ways (A shares with B: rows A→B and
-- B→A): the profiles whose events decide a group, read when an event arrives out of
-- order and the group is refolded. A link is kept for good; who is in a group *now*
-- is `entitlements.sharing_group` (a member leaves it at an inactive snapshot with no
-- list). A group holds at most 100 profiles: a link past that is not made (and logged).
CREATE TABLE sharing_links (
    access_level_id  TEXT NOT NULL,
    profile_id       TEXT NOT NULL,
    shared_with      TEXT NOT NULL,
    profile_event_id TEXT NOT NULL,         -- the declaration that first made the link
    PRIMARY KEY (profile_id, access_level_id, shared_with)
) STRICT, WITHOUT ROWID;

-- Work a schema upgrade left for the daemon's next start, which needs the
-- configuration the upgrade does not have: version 4 asks for a rebuild when stored
-- events already declared shared access. Empty but for that moment.
CREATE TABLE upgrade_tasks (
    task   TEXT PRIMARY KEY,                -- 'rebuild'
    reason TEXT NOT NULL
) STRICT;

-- The change feed: every time a level's effective access flipped, in order. `seq` is
-- the cursor of GET /changes. Written in the same transaction as the state it reports,
-- so a restart or a duplicate never reports a change twice or skips one.
CREATE TABLE access_changes (
    seq              INTEGER PRIMARY KEY,
    profile_id       TEXT NOT NULL,
    access_level_id  TEXT NOT NULL,
    active           INTEGER NOT NULL,      -- 1: gained access; 0: lost it
    reason           TEXT NOT NULL,         -- the canonical event type that did it
                                            -- ('shared:<type>' when another member's
                                            -- event did it), or 'expired' / 'started'
                                            -- (the clock), 'rebuild'
    profile_event_id TEXT,                  -- the event, when one did it
    expires_at       TEXT,                  -- the level's expires_at after the change
    changed_at       TEXT NOT NULL,         -- when entitled recorded the change
    customer_user_id TEXT,                  -- the profile's customer_user_id then (added by version 3)
    shared_from      TEXT                   -- the member whose event did it, when not this
                                            -- profile (added by version 4)
) STRICT;

-- Push (`--notify-url`): where delivery of the change feed stands. One row, made at
-- the first start with a URL (at the newest change then: history is sent only on
-- `replay`). Every change up to `delivered_seq` was confirmed by a 2xx or parked in
-- notify_failed; the next one is delivered next (docs/reliability.md#push).
CREATE TABLE notify_state (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    delivered_seq INTEGER NOT NULL          -- access_changes.seq
) STRICT;

-- Changes whose delivery failed for --notify-retry-for (24 h by default): parked, so
-- delivery went on. GET /notify/failed lists them; replay sends them again.
CREATE TABLE notify_failed (
    seq             INTEGER PRIMARY KEY,    -- access_changes.seq
    attempts        INTEGER NOT NULL,
    first_failed_at TEXT NOT NULL,
    last_failed_at  TEXT NOT NULL,
    last_error      TEXT NOT NULL           -- the status, or the connection's error
) STRICT;

-- What the read API answers, for a person at the prompt: the levels that grant access
-- at this instant: active, and (lifetime, or no expires_at, or now < expires_at), and
-- starts_at <= now when given. A refunded lifetime purchase is not active.
-- `shared_from`: the profile whose purchase this is, when shared (NULL: its own).
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
WHERE e.is_active = 1
  AND (e.is_lifetime = 1 OR e.expires_at IS NULL
       OR e.expires_at > strftime('%Y-%m-%dT%H:%M:%f000Z', 'now'))
  AND (e.starts_at IS NULL OR e.starts_at <= strftime('%Y-%m-%dT%H:%M:%f000Z', 'now'));
