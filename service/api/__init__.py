"""HTTP routes, one module per group: upscale, probes (healthz/readyz), metrics."""
