"""State in Redis: the client and its modes, the repository that owns the key layout, the runner, the scripts."""
