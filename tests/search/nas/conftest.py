import pytest

from tests.search.nas.postgres_server import PostgresServer, missing


@pytest.fixture(scope="session")
def postgres_server():
    """A throwaway PostgreSQL server for the session (skips, saying what to install, where none can be started)."""
    reason = missing()
    if reason:
        pytest.skip(reason)
    server = PostgresServer()
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server) -> str:
    """The URL of a new empty database on the session's server: postgresql+psycopg://effx@127.0.0.1:<port>/<db>."""
    return postgres_server.create_database()
