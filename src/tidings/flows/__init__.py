"""Flows: event-triggered runs with durable waits, guards before every send, and their journal."""
