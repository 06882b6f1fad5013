#!lua
-- KEYS: none.
-- ARGV: none.
-- The readiness probe: answers 1.
-- A script declared with a shebang and no flags is one Redis treats as a write before it runs:
-- refused on a read-only replica (READONLY), over maxmemory (OOM), without +@scripting (NOPERM),
-- so running it answers "would an ingest's writes succeed now" in one call. No prologue: it is
-- sent keyless to one node at a time, and the flags must stay none.
return 1
