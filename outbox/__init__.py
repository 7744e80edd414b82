"""The transactional outbox: store backends, the batch writer, the application-side writer."""
