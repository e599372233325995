"""Schema upgrades: a database written by an older version opens with its rows kept."""
import sqlite3

import peewee

from daemon import database, models

# The shape of the first release's tables, minus columns and tables added since.
OLD_SCHEMA = """
CREATE TABLE manifests (id INTEGER NOT NULL PRIMARY KEY, name VARCHAR(255) NOT NULL,
    status VARCHAR(255) NOT NULL, received_at DATETIME NOT NULL);
CREATE TABLE downloads (id INTEGER NOT NULL PRIMARY KEY, state VARCHAR(255) NOT NULL, url TEXT,
    filename VARCHAR(255), path TEXT, bytes INTEGER NOT NULL, priority INTEGER NOT NULL,
    created_at DATETIME NOT NULL);
INSERT INTO manifests VALUES (1, 'old.json', 'done', '2025-01-02 03:04:05');
INSERT INTO downloads VALUES (1, 'completed', 'https://example.com/a.safetensors', 'a.safetensors',
    '/models/a.safetensors', 1234, 5, '2025-01-02 03:04:05');
INSERT INTO downloads VALUES (2, 'paused', 'https://example.com/b.safetensors', NULL, NULL, 0, 0,
    '2025-01-02 03:04:06');
"""


def _old_file(tmp_path):
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(OLD_SCHEMA)
    conn.close()
    return path


def test_old_sqlite_file_gains_tables_and_columns_and_keeps_rows(tmp_path):
    path = _old_file(tmp_path)
    db = database.open_database(path)
    try:
        assert set(db.get_tables()) >= {m._meta.table_name for m in models.TABLES}
        for model in models.TABLES:
            have = {c.name for c in db.get_columns(model._meta.table_name)}
            assert {f.column_name for f in model._meta.sorted_fields} <= have, model
        first = models.Download.get_by_id(1)
        assert (first.state, first.filename, first.bytes, first.priority) == ("completed", "a.safetensors", 1234, 5)
        assert first.attempts == 0 and first.verified is False    # new columns got their defaults
        assert models.Download.get_by_id(2).state == "paused"
        assert models.ManifestRecord.get_by_id(1).errors == "[]"
        # The upgraded tables take new rows with every field.
        row = models.Download.create(url="https://example.com/c", expected_sha256="0" * 64, model_id=7)
        assert models.Download.select().where(models.Download.model_id == 7).get().id == row.id
        models.ModelUpdate.create(model_id=7, version_id=8)
    finally:
        db.close()
    # A second open finds nothing to do and changes nothing.
    db = database.open_database(path)
    try:
        assert models.Download.select().count() == 3
    finally:
        db.close()


def test_migration_adds_a_column_a_newer_model_declares(tmp_path):
    """What the next release does: a field added to a model appears in an existing database."""
    db = database.open_database(tmp_path / "cur.db")
    models.Download.create(url="https://example.com/x")

    class Download(models.Download):
        node = peewee.CharField(null=True)
        lease_count = peewee.IntegerField(default=3)

        class Meta:
            table_name = "downloads"

    try:
        database.migrate_schema(db, [Download])
        got = Download.get()
        assert (got.url, got.node, got.lease_count) == ("https://example.com/x", None, 3)
    finally:
        db.close()


def test_daemon_starts_on_an_old_database_and_lists_its_rows(tmp_path, make_daemon):
    path = _old_file(tmp_path)
    daemon = make_daemon(database=str(path))
    listed = daemon.get("/api/downloads?state=completed").json()
    assert [d["filename"] for d in listed["items"]] == ["a.safetensors"]
