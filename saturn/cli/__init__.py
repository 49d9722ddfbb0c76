"""Command-line interface (`saturn ...`)."""
