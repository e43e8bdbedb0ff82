"""Feedback API: users' thumbs up/down on served completions, committed before the 2xx."""
