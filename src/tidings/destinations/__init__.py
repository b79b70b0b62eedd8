"""One module per destination kind: its requests, its limits, the meaning of its errors."""
