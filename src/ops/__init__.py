"""Operations on stores: a local PostgreSQL for the tracking server (`src.db`), copying runs between stores (`src.migrate`)."""
