"""Fan-out: publications encoded once, the hub of who watches what, one outbound per connection."""
