"""An app that cannot be imported: its traceback must reach the journal at priority err."""

raise RuntimeError("obsbroken: database unreachable at import")
