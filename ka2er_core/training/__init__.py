"""Training: click simulation, crop sampling, losses and the one loop every trainer shares."""
