-- Services an operator archived: hidden from the list by default, refused
-- for new revisions and assignments. Expand-only: a nullable column.
ALTER TABLE services ADD COLUMN archived_at timestamptz;
