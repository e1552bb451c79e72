"""The query log on PostgreSQL through a standard driver (psycopg): the same schema and code as SQLite.

The DDL test always runs. The live tests run where ADVFORENSICS_TEST_POSTGRES names an empty database
the tests may fill (e.g. postgresql+psycopg://afk:afk@localhost/afklog); CI has no server and skips them.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import orjson
import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.schema import CreateIndex, CreateTable
from starlette.testclient import TestClient

from advforensics.errors import DataFileError
from advforensics.serving.app import Endpoint, create_app
from advforensics.serving.querylog import QueryLog, log_info, metadata, queries

URL = os.environ.get("ADVFORENSICS_TEST_POSTGRES")
live = pytest.mark.skipif(not URL, reason="set ADVFORENSICS_TEST_POSTGRES to a PostgreSQL URL to run")


def test_the_schema_compiles_for_postgresql() -> None:
    dialect = postgresql.dialect()
    ddl = str(CreateTable(queries).compile(dialect=dialect))
    assert "id BIGSERIAL" in ddl and "sketch BYTEA NOT NULL" in ddl and "image BYTEA" in ddl
    assert "value TEXT NOT NULL" in str(CreateTable(log_info).compile(dialect=dialect))
    for index in queries.indexes:
        str(CreateIndex(index).compile(dialect=dialect))


@pytest.fixture
def empty_database():
    engine = sa.create_engine(URL)
    metadata.drop_all(engine)
    with engine.begin() as connection:
        connection.exec_driver_sql("DROP TABLE IF EXISTS not_ours")
    yield URL
    metadata.drop_all(engine)
    with engine.begin() as connection:
        connection.exec_driver_sql("DROP TABLE IF EXISTS not_ours")
    engine.dispose()


@live
def test_the_endpoint_logs_every_answer_into_postgresql(served, tmp_path, empty_database) -> None:
    keys = tmp_path / "keys.json"
    shutil.copy(served.keys, keys)
    images = np.random.default_rng(0).random((37, 1, 8, 8), dtype=np.float32)
    with TestClient(create_app(Endpoint(served.record, keys, empty_database))) as client:
        answers = [client.post("/v1/labels", headers={"Authorization": f"Bearer {key}"},
                               content=orjson.dumps({"images": images}, option=orjson.OPT_SERIALIZE_NUMPY)).json()
                   for key in (served.alice, served.bob)]
    logged = QueryLog(empty_database, create=False).read()
    assert len(logged) == 74 and logged.ids.dtype == np.int64
    for name, answer in zip(("alice", "bob"), answers):
        assert logged.of(name).labels.tolist() == answer["labels"]
    assert QueryLog(empty_database).image_shape == (1, 8, 8)


@live
def test_a_database_holding_other_tables_is_refused_and_left_alone(empty_database) -> None:
    engine = sa.create_engine(empty_database)
    with engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE not_ours (x integer)")
    with pytest.raises(DataFileError, match="not an advforensics query log"):
        QueryLog(empty_database)
    assert sa.inspect(engine).get_table_names() == ["not_ours"]
    engine.dispose()
