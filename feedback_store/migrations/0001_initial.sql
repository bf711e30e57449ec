-- Glance schema 1. Times: *_wall_ns is wall clock (for people), *_mono_ns is
-- time.monotonic_ns() (for ordering and durations within one app session).

CREATE TABLE conversations (
    id VARCHAR PRIMARY KEY,
    title VARCHAR NOT NULL,
    created_wall_ns BIGINT NOT NULL,
    updated_wall_ns BIGINT NOT NULL,
    active_leaf_id VARCHAR,          -- which branch is shown
    settings VARCHAR                 -- JSON: system prompt, temperature, ...
);

CREATE TABLE messages (
    id VARCHAR PRIMARY KEY,
    conversation_id VARCHAR NOT NULL,
    parent_id VARCHAR,               -- previous turn; siblings share a parent (branches)
    role VARCHAR NOT NULL,           -- system | user | assistant
    content VARCHAR NOT NULL,
    created_wall_ns BIGINT NOT NULL,
    model VARCHAR,
    settings VARCHAR,                -- JSON of the generation settings used
    prompt_tokens INTEGER,
    tokens INTEGER,
    ttft_s DOUBLE,
    tokens_per_s DOUBLE,
    finish_reason VARCHAR,           -- stop | length | cancelled
    dropped_turns INTEGER            -- oldest turns left out to fit the context
);

CREATE TABLE app_sessions (
    id VARCHAR PRIMARY KEY,
    started_wall_ns BIGINT NOT NULL,
    started_mono_ns BIGINT NOT NULL,
    app_version VARCHAR,
    screen VARCHAR                   -- JSON: geometry and device pixel ratio
);

-- A reply as it was on screen: what text, where, when. Samples refer to it by id.
CREATE TABLE shown_replies (
    id VARCHAR PRIMARY KEY,
    session_id VARCHAR,
    message_id VARCHAR NOT NULL,
    conversation_id VARCHAR NOT NULL,
    shown_wall_ns BIGINT NOT NULL,
    shown_mono_ns BIGINT NOT NULL,
    hidden_mono_ns BIGINT,
    screen_x INTEGER, screen_y INTEGER, width INTEGER, height INTEGER,
    device_pixel_ratio DOUBLE,
    rendered_text VARCHAR,           -- the plain text offsets refer to
    layout VARCHAR                   -- JSON: line boxes (offset range + rectangle)
);

CREATE TABLE feedback (
    id VARCHAR PRIMARY KEY,
    message_id VARCHAR NOT NULL,
    conversation_id VARCHAR NOT NULL,
    kind VARCHAR NOT NULL,           -- thumb
    value INTEGER NOT NULL,          -- +1 / -1 / 0 (cleared)
    wall_ns BIGINT NOT NULL
);

-- High-rate samples. No keys or indexes: append-only, bulk-inserted in batches.
CREATE TABLE pointer_samples (
    session_id VARCHAR,
    shown_reply_id VARCHAR,
    conversation_id VARCHAR,
    mono_ns BIGINT NOT NULL,
    wall_ns BIGINT NOT NULL,
    kind VARCHAR NOT NULL,           -- move | click | scroll | select | key_timing
    x DOUBLE, y DOUBLE,              -- screen coordinates (logical pixels)
    text_offset INTEGER,             -- char offset in rendered_text, NULL if not over text
    source VARCHAR                   -- pynput | qt
);

CREATE TABLE gaze_samples (
    session_id VARCHAR,
    shown_reply_id VARCHAR,
    conversation_id VARCHAR,
    mono_ns BIGINT NOT NULL,
    wall_ns BIGINT NOT NULL,
    kind VARCHAR NOT NULL,           -- raw | fixation
    x DOUBLE, y DOUBLE,
    text_offset INTEGER,
    source VARCHAR,                  -- webcam
    confidence DOUBLE
);

-- Every consent decision ever made; the newest per signal is in force.
CREATE TABLE consents (
    signal VARCHAR NOT NULL,
    granted BOOLEAN NOT NULL,
    at_wall_ns BIGINT NOT NULL,
    text_version INTEGER NOT NULL
);

CREATE TABLE models (
    path VARCHAR PRIMARY KEY,
    name VARCHAR,
    architecture VARCHAR,
    context_length INTEGER,
    chat_template VARCHAR,
    size_bytes BIGINT,
    added_wall_ns BIGINT NOT NULL,
    last_used_wall_ns BIGINT
);

CREATE TABLE app_settings (
    key VARCHAR PRIMARY KEY,
    value VARCHAR NOT NULL           -- JSON
);
