"""The HTTP face: app factory, service descriptors, blueprints, the error handler, probes, request log, OpenAPI."""
