"""HTTP API: app factory, lifespan, routes per resource, schemas, auth, web page."""
