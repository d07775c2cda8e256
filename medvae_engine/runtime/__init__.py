"""Runtime services every feature shares: progress, cancel, precision, seeding, distributed set-up."""
