"""Declarative mapping from what a sender posted to canonical CustomerEvents (JMESPath rules)."""
