"""The transformers inference engine (the contract is written here once the loop has moved in)."""
