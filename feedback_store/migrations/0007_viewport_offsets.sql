-- Glance schema 7: what of a reply is on screen, as text offsets too.
-- A viewport event's lines are the layout's of that moment; a window resize re-wraps the
-- reply and the stored layout is the latest, so line numbers alone mixed two layouts in
-- one trace. [first_offset, last_offset) is the visible text: it means the same in any
-- layout. NULL on rows written before this migration (their lines are used as they are).
ALTER TABLE viewport_events ADD COLUMN first_offset INTEGER;
ALTER TABLE viewport_events ADD COLUMN last_offset INTEGER;
