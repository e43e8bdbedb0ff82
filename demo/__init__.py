"""`loraloop demo`: the whole loop on one machine, driven by simulated users.

The demo starts the real system as separate processes (`loraloop serve --dev`: gateway +
vLLM; `loraloop scheduler`: training, gate) and a population of simulated users that talk
to the gateway through the official openai client and send thumbs through /v1/feedback.
Their taste (a persona) is known only to them: it reaches the system as thumbs.
"""
