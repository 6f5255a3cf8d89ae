"""Who is running: `heartbeat` (each running App's record in Redis) and `liveness` (which processes
are alive, the one rule for claiming and tidying)."""
