-- Glance schema 5: interaction capture. (3 and 4 are the research import and training.)

-- What of each reply is on screen, over time: reading position is known even without
-- pointer or gaze. One row per change (scroll, resize, move, minimise, focus, idle...).
CREATE TABLE viewport_events (
    session_id VARCHAR,
    shown_reply_id VARCHAR,
    conversation_id VARCHAR,
    mono_ns BIGINT NOT NULL,
    wall_ns BIGINT NOT NULL,
    kind VARCHAR NOT NULL,           -- layout | scroll | resize | move | minimized | restored
                                     -- | focus | blur | idle | active | hidden
    first_line INTEGER,              -- visible visual lines [first, last]; NULL = none visible
    last_line INTEGER,
    origin_x DOUBLE, origin_y DOUBLE,  -- the reply text's top-left on screen (logical px)
    window_visible BOOLEAN           -- false while minimised or hidden
);

-- Actions around a reply: selection and copy (offsets only, never the text), stop,
-- regenerate, edit, thumbs, sibling switches, compare and pick; typing timing (never keys).
CREATE TABLE reply_actions (
    session_id VARCHAR,
    shown_reply_id VARCHAR,
    conversation_id VARCHAR,
    message_id VARCHAR,
    mono_ns BIGINT NOT NULL,
    wall_ns BIGINT NOT NULL,
    kind VARCHAR NOT NULL,
    start_offset INTEGER,
    end_offset INTEGER,
    value DOUBLE,                    -- thumb value, ms from reply end to first keystroke...
    duration_ms DOUBLE
);

-- Side-by-side picks are explicit pairwise feedback: message_id is the left reply,
-- other_message_id the right one; value +1 = left preferred, -1 = right, 0 = tie.
ALTER TABLE feedback ADD COLUMN other_message_id VARCHAR;
ALTER TABLE feedback ADD COLUMN picked_mono_ns BIGINT;
-- Pointer samples carry the button (clicks) and the scroll delta.
ALTER TABLE pointer_samples ADD COLUMN button VARCHAR;
ALTER TABLE pointer_samples ADD COLUMN dx DOUBLE;
ALTER TABLE pointer_samples ADD COLUMN dy DOUBLE;
ALTER TABLE pointer_samples ADD COLUMN window_visible BOOLEAN;
-- Fixations carry their duration.
ALTER TABLE gaze_samples ADD COLUMN duration_ms DOUBLE;
