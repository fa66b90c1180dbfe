"""An app whose import fails, as a bad deploy does."""

raise RuntimeError("probe: cannot import settings (DATABASE_URL is not set)")
