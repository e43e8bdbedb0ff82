"""Training side: feedback -> preference data -> TRL + PEFT adapters -> eval gate."""
