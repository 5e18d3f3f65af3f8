"""Engine-neutral search spaces and the concrete compression policy a trial evaluates."""
