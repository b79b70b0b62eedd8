"""Customer profiles: identity resolution, per-field versioned traits, computed traits, consent, timeline."""
