-- Glance schema 4: nightly training (align --nightly).

-- Every run of the nightly job, whatever its outcome.
CREATE TABLE training_runs (
    id VARCHAR PRIMARY KEY,
    started_wall_ns BIGINT NOT NULL,
    finished_wall_ns BIGINT,
    status VARCHAR NOT NULL,         -- running | published | not_published | nothing_new
                                     -- | skipped | failed | interrupted
    via VARCHAR,                     -- app (the window served a snapshot) | direct (store opened)
    base_model VARCHAR,              -- file name of the GGUF trained on
    pairs INTEGER,                   -- pairs built (train + held out)
    pairs_by_source VARCHAR,         -- JSON: source -> count
    fingerprint VARCHAR,             -- hash of the pair set (nothing new = same as last run)
    adapter_version VARCHAR,         -- written by this run (published or not)
    published BOOLEAN,
    report VARCHAR,                  -- JSON: training, gate, length bias, timings
    message VARCHAR                  -- one sentence for people
);

-- The pairs a run trained or evaluated on. Keyed by conversation, so deleting a
-- conversation deletes its rows (and the adapters that used them are retired).
CREATE TABLE training_pairs (
    run_id VARCHAR NOT NULL,
    conversation_id VARCHAR NOT NULL,
    prompt_message_id VARCHAR,
    chosen_message_id VARCHAR NOT NULL,
    rejected_message_id VARCHAR NOT NULL,
    source VARCHAR NOT NULL,         -- pick | thumbs | regenerate | reward | imported
    epsilon DOUBLE NOT NULL,         -- probability that the label is flipped
    split VARCHAR NOT NULL           -- train | heldout
);

-- Adapter versions written under <data dir>/adapters/ (the files are the truth for the
-- engine; these rows are their history).
CREATE TABLE adapter_versions (
    version VARCHAR PRIMARY KEY,
    run_id VARCHAR,
    created_wall_ns BIGINT NOT NULL,
    base_model VARCHAR,
    conversations INTEGER,           -- distinct conversations trained on
    status VARCHAR NOT NULL,         -- published | refused | retired
    status_wall_ns BIGINT,
    reason VARCHAR,
    report VARCHAR                   -- JSON: gate metrics
);
