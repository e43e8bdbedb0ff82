"""The embedded engine: a vLLM OpenAI server run as a supervised subprocess on loopback."""
