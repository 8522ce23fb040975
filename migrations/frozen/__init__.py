"""What revisions share, frozen: each module is named for the revision that wrote it and imports
nothing from `etl` (tests/test_migrations.py holds every revision to that)."""
