"""Runtime services every feature shares: the Progress protocol and its CLI driver, cancel,
precision, seeding, distributed set-up, the metrics log and the training step loop."""
