"""The domain core shared by gateway and trainer: adapter versions, their lifecycle, the
artifact store, the fleet of vLLM replicas, and the database schema with its migrations."""
