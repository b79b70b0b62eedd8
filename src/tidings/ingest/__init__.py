"""Receiving: one receiver per sender kind, a group-committed inbox behind them."""
