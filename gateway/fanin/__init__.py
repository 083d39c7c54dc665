"""Fan-in: how a replica hears about publications (the broker interface and its Redis,
Redis Cluster and in-memory brokers), ordered and gap-filled from the history stream."""
