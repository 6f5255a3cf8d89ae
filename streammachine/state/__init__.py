"""State kept in Redis: `storage` (shared state, one hash per namespace), `objstore` (signed
pickles)."""
