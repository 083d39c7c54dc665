"""The developer toolbox: `make run`, the `seatcast` CLI, embedded servers; not for backends."""
