"""The request framework: declared contracts, device and staff authentication, idempotency,
nonces, problem documents, metrics, and the OpenAPI document generated from the contracts."""
