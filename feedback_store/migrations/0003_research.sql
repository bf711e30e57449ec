-- Glance schema 3: imported research data (the IFLLM study, or any folder in its format).
-- Its own scope (tables.py: "research"): never expired by retention, never used for the
-- user's training unless asked (`align reward train --research`), removable on its own
-- (`align import-ifllm --remove`), not part of `glance data export` (it is not the
-- user's data). Every row carries the import it came from; re-importing the same folder
-- replaces that import's rows (idempotent). Written in bulk by align/research.py.

CREATE TABLE IF NOT EXISTS research_imports (
    id VARCHAR PRIMARY KEY,          -- content fingerprint of the imported folder
    source VARCHAR NOT NULL,         -- ifllm
    directory VARCHAR,
    imported_wall_ns BIGINT NOT NULL,
    report VARCHAR                   -- JSON: rows read / repaired / dropped, by reason
);

-- A study task = a conversation of one worker (= user).
CREATE TABLE IF NOT EXISTS research_conversations (
    import_id VARCHAR NOT NULL,
    id VARCHAR NOT NULL,             -- ifllm:<worker>/<task_id>
    user_id VARCHAR NOT NULL,        -- the study's worker id
    task_id BIGINT,
    clock_shift_h INTEGER            -- whole-hour skew repaired between queries and samples
);

-- A query and the answer(s) shown for it.
CREATE TABLE IF NOT EXISTS research_turns (
    import_id VARCHAR NOT NULL,
    id VARCHAR NOT NULL,             -- ifllm:<query_id>
    conversation_id VARCHAR NOT NULL,
    user_id VARCHAR NOT NULL,
    query_id BIGINT,
    turn_index INTEGER,              -- position in its conversation
    query VARCHAR,
    pairwise BOOLEAN,                -- two answers side by side
    shown_epoch_ms DOUBLE,           -- on the samples' clock (skew repaired)
    end_epoch_ms DOUBLE,             -- next query (or the task's last sample)
    adjustment INTEGER               -- 1 when the study site rewrote the prompt
);

-- An answer as it was on screen: the text offsets refer to and its visual lines.
CREATE TABLE IF NOT EXISTS research_shown_replies (
    import_id VARCHAR NOT NULL,
    id VARCHAR NOT NULL,             -- ifllm:<query_id>:<side>
    turn_id VARCHAR NOT NULL,
    conversation_id VARCHAR NOT NULL,
    user_id VARCHAR NOT NULL,
    side INTEGER,                    -- 1 = left (or the only answer), 2 = right
    model VARCHAR,                   -- the study's LLM name
    rendered_text VARCHAR,
    line_starts INTEGER[],           -- char offset of each visual line
    lines_estimated BOOLEAN          -- wrapped at an estimated width (no line boxes logged)
);

-- Gaze and mouse samples. Box samples belong to a shown reply (offset, word, line from
-- the shared tokenizer); page samples (the study's abs_* files, page pixels) use the
-- shown_reply_id ifllm:<query_id>:page and have no text position.
CREATE TABLE IF NOT EXISTS research_samples (
    import_id VARCHAR NOT NULL,
    shown_reply_id VARCHAR NOT NULL,
    seq INTEGER NOT NULL,            -- order within the reply's trace (time, then source)
    t_ms DOUBLE NOT NULL,            -- ms since the reply was shown
    x DOUBLE, y DOUBLE,              -- NULL = not over the box
    text_offset INTEGER,             -- NULL = not over text
    word_index INTEGER,
    line INTEGER,
    source UTINYINT NOT NULL,        -- 0 pointer, 1 gaze (feedback_store.trace)
    confidence DOUBLE                -- gaze: the study's validation flag (1/0), NULL unknown
);

-- Explicit ratings: preference between two answers (value 1 = left, 2 = right),
-- better_than_previous (1 better, 0 worse), likert (1-5, per side).
CREATE TABLE IF NOT EXISTS research_feedback (
    import_id VARCHAR NOT NULL,
    turn_id VARCHAR NOT NULL,
    conversation_id VARCHAR NOT NULL,
    user_id VARCHAR NOT NULL,
    kind VARCHAR NOT NULL,
    side INTEGER,
    value DOUBLE NOT NULL
);
