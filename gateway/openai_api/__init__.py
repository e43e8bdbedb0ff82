"""The OpenAI-compatible API: completions, chat completions, models."""
