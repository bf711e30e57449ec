-- Glance schema 2 (trunk before capture).
-- Refusal counts live in the database, so `glance data status` in another process
-- sees what the app refused (no consent, paused, incognito, deleted, queue full).
CREATE TABLE refusals (
    reason VARCHAR PRIMARY KEY,
    rows BIGINT NOT NULL,
    updated_wall_ns BIGINT NOT NULL
);

-- Samples carry the word and visual line they were mapped to (GUI-free tokenizer).
ALTER TABLE pointer_samples ADD COLUMN word_index INTEGER;
ALTER TABLE pointer_samples ADD COLUMN line INTEGER;
ALTER TABLE gaze_samples ADD COLUMN word_index INTEGER;
ALTER TABLE gaze_samples ADD COLUMN line INTEGER;
