"""Small stdlib-only helpers with one definition each: atomic writes and file locks, free ports, deadline polling."""
