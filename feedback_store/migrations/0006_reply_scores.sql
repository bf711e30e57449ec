-- Glance schema 6: the reward model's judgement of each shown reply (align/scoring.py).
-- Derived from the reading samples, so it expires with them and goes with its conversation.
CREATE TABLE reply_scores (
    shown_reply_id VARCHAR NOT NULL,
    message_id VARCHAR NOT NULL,
    conversation_id VARCHAR NOT NULL,
    previous_message_id VARCHAR,     -- the reply it was compared with (NULL: the first one)
    model VARCHAR NOT NULL,          -- the reward model file's version
    task VARCHAR NOT NULL,           -- pointwise: P(this reply satisfied more than the previous)
    probability DOUBLE NOT NULL,
    contributions VARCHAR,           -- JSON [[feature, signed log-odds], ...], largest first
    scored_wall_ns BIGINT NOT NULL
);
