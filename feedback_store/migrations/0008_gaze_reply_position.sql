-- Glance schema 8: where on the reply a gaze sample fell, in the reply's own pixels.
-- Gaze is off by a few lines; the trace reader finds the line each fixation was on from
-- the fixations' positions on the reply and the reading's order (reading_lines.py). Screen
-- coordinates alone cannot say that once the reply has scrolled: (reply_x, reply_y) is
-- the point relative to the top-left of the reply's text area at that moment. NULL when
-- the point was over no reply, and on rows written before this migration (their lines
-- stay as mapped).
ALTER TABLE gaze_samples ADD COLUMN reply_x DOUBLE;
ALTER TABLE gaze_samples ADD COLUMN reply_y DOUBLE;
