"""Delivery: the outbox of intended effects and the dispatcher that takes them to destinations."""
