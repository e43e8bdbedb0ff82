"""Admin API: operators' view of and hand on the registry (admin keys only)."""
