package sqlite

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"
)

// The layout is built so that a send is one sequential append: the queue
// table has no secondary index, so a group commit writes its rows at the
// end of one B-tree and nothing else. What a receiver needs to find a
// session's next message is kept in memory by each receiving process (see
// index.go), rebuilt from the table by a sequential scan.
//
//   - queue: the messages, with their delivery state (delivery count, lock,
//     abandon delay) in the same row, so handing a message out and settling
//     it each rewrite one row. seq is AUTOINCREMENT so a sequence number is
//     never reused, even after the newest messages were removed: receivers
//     scan for seq > the last they saw.
//   - dedup_log: the MessageIDs of messages that left the queue (completed or
//     dead-lettered), appended as they leave, so every receiving process
//     knows what the duplicate window has seen.
//   - deadletter: the dead-letter queue.
//   - meta: the schema version; probe: the readiness write probe.
const schemaVersion = 2

const schema = `
CREATE TABLE IF NOT EXISTS meta (
	key   TEXT PRIMARY KEY,
	value INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS queue (
	seq            INTEGER PRIMARY KEY AUTOINCREMENT,
	message_id     TEXT    NOT NULL,
	session_id     TEXT    NOT NULL,
	enqueued_at    INTEGER NOT NULL,
	data           BLOB    NOT NULL,
	delivery_count INTEGER NOT NULL DEFAULT 0,
	locked_until   INTEGER NOT NULL DEFAULT 0,
	lock_token     TEXT,
	visible_at     INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS dedup_log (
	id         INTEGER PRIMARY KEY,
	message_id TEXT    NOT NULL,
	expires_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS deadletter (
	seq              INTEGER PRIMARY KEY,
	message_id       TEXT    NOT NULL,
	session_id       TEXT    NOT NULL,
	enqueued_at      INTEGER NOT NULL,
	data             BLOB    NOT NULL,
	delivery_count   INTEGER NOT NULL,
	reason           TEXT    NOT NULL,
	description      TEXT    NOT NULL,
	dead_lettered_at INTEGER NOT NULL,
	locked_until     INTEGER NOT NULL DEFAULT 0,
	lock_token       TEXT
);
CREATE INDEX IF NOT EXISTS deadletter_message_id ON deadletter(message_id);
CREATE TABLE IF NOT EXISTS probe (
	id  INTEGER PRIMARY KEY,
	pad BLOB
);
`

// checkOwnFile refuses a SQLite database that holds tables but is not a
// hookbridge queue (of this version, with its meta table, or of version 1),
// before anything changes it: a --queue path naming another application's
// database must not gain tables or switch to WAL.
func checkOwnFile(ctx context.Context, c *conn) error {
	rows, err := c.c.QueryContext(ctx, `SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name`)
	if err != nil {
		return explain(err)
	}
	defer rows.Close()
	var names []string
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			return explain(err)
		}
		names = append(names, n)
	}
	if err := rows.Err(); err != nil {
		return explain(err)
	}
	if len(names) == 0 || slices.Contains(names, "meta") || slices.Contains(names, "messages") && slices.Contains(names, "deadletters") {
		return nil
	}
	if len(names) > 5 {
		names = append(names[:5], "…")
	}
	return fmt.Errorf("the file is a SQLite database but not a hookbridge queue (its tables: %s); it was left unchanged: give the path of the queue's file, or a new one", strings.Join(names, ", "))
}

// createSchema creates the tables and upgrades files written by earlier
// versions. It runs in a write transaction, so processes opening a new file
// at once create it once.
func createSchema(ctx context.Context, c *conn) error {
	tx := c.c
	if _, err := tx.ExecContext(ctx, schema); err != nil {
		return fmt.Errorf("create tables: %w", err)
	}
	var version int64
	err := tx.QueryRowContext(ctx, `SELECT value FROM meta WHERE key = 'schema_version'`).Scan(&version)
	switch {
	case err == sql.ErrNoRows:
	case err != nil:
		return fmt.Errorf("read schema version: %w", err)
	case version > schemaVersion:
		return fmt.Errorf("the queue file was written by a newer hookbridge (schema %d, this one knows %d); upgrade hookbridge", version, schemaVersion)
	case version == schemaVersion:
		return nil
	}
	if err := migrateV1(ctx, tx); err != nil {
		return fmt.Errorf("upgrade from an earlier version: %w", err)
	}
	_, err = tx.ExecContext(ctx, `INSERT INTO meta (key, value) VALUES ('schema_version', ?)
		ON CONFLICT(key) DO UPDATE SET value = excluded.value`, schemaVersion)
	return err
}

// migrateV1 moves the contents of a version 1 file (tables messages,
// deadletters, dedup) into the current tables, keeping sequence numbers,
// delivery counts and the duplicate window.
func migrateV1(ctx context.Context, tx *sql.Conn) error {
	var n int
	if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'messages'`).Scan(&n); err != nil {
		return err
	}
	if n == 0 {
		return nil // a new file
	}
	now := time.Now().UnixNano()
	rows, err := tx.QueryContext(ctx, `SELECT seq, message_id, session_id, subject, content_type, properties, body,
		enqueued_at, visible_at, delivery_count FROM messages ORDER BY seq`)
	if err != nil {
		return err
	}
	type v1 struct {
		seq, enq, visible, count int64
		id, session              string
		data                     []byte
	}
	var msgs []v1
	for rows.Next() {
		var m v1
		var subject, ct string
		var props, body []byte
		if err := rows.Scan(&m.seq, &m.id, &m.session, &subject, &ct, &props, &body, &m.enq, &m.visible, &m.count); err != nil {
			rows.Close()
			return err
		}
		if m.data, err = migrateData(subject, ct, props, body); err != nil {
			rows.Close()
			return fmt.Errorf("message %d: %w", m.seq, err)
		}
		msgs = append(msgs, m)
	}
	if err := rows.Close(); err != nil {
		return err
	}
	for _, m := range msgs {
		// Locks held by the old version's processes are released: none of
		// them can still be running against a migrated file.
		if _, err := tx.ExecContext(ctx, `INSERT INTO queue (seq, message_id, session_id, enqueued_at, data, delivery_count, visible_at)
			VALUES (?, ?, ?, ?, ?, ?, ?)`, m.seq, m.id, m.session, m.enq, m.data, m.count, m.visible); err != nil {
			return err
		}
	}
	rows, err = tx.QueryContext(ctx, `SELECT seq, message_id, session_id, subject, content_type, properties, body,
		enqueued_at, delivery_count, reason, description, dead_lettered_at FROM deadletters ORDER BY seq`)
	if err != nil {
		return err
	}
	type dl struct {
		seq, enq, count, at int64
		id, session         string
		reason, desc        string
		data                []byte
	}
	var dls []dl
	for rows.Next() {
		var d dl
		var subject, ct string
		var props, body []byte
		if err := rows.Scan(&d.seq, &d.id, &d.session, &subject, &ct, &props, &body, &d.enq, &d.count, &d.reason, &d.desc, &d.at); err != nil {
			rows.Close()
			return err
		}
		if d.data, err = migrateData(subject, ct, props, body); err != nil {
			rows.Close()
			return fmt.Errorf("dead-lettered message %d: %w", d.seq, err)
		}
		dls = append(dls, d)
	}
	if err := rows.Close(); err != nil {
		return err
	}
	for _, d := range dls {
		if _, err := tx.ExecContext(ctx, `INSERT INTO deadletter (seq, message_id, session_id, enqueued_at, data, delivery_count, reason, description, dead_lettered_at)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`, d.seq, d.id, d.session, d.enq, d.data, d.count, d.reason, d.desc, d.at); err != nil {
			return err
		}
	}
	// The old window recorded every ID sent; those still waiting are in the
	// queue now, and are found there (see index).
	if _, err := tx.ExecContext(ctx, `INSERT INTO dedup_log (message_id, expires_at)
		SELECT message_id, expires_at FROM dedup WHERE expires_at > ? AND message_id NOT IN (SELECT message_id FROM messages)
		ORDER BY expires_at`, now); err != nil {
		return err
	}
	// Keep the sequence going where the old tables left it: a sequence
	// number is never reused.
	var last int64
	if err := tx.QueryRowContext(ctx, `SELECT max(
		coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'messages'), 0),
		coalesce((SELECT max(seq) FROM deadletters), 0),
		coalesce((SELECT max(seq) FROM queue), 0))`).Scan(&last); err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, `DELETE FROM sqlite_sequence WHERE name = 'queue'`); err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO sqlite_sequence (name, seq) VALUES ('queue', ?)`, last); err != nil {
		return err
	}
	for _, stmt := range []string{`DROP TABLE messages`, `DROP TABLE deadletters`, `DROP TABLE dedup`} {
		if _, err := tx.ExecContext(ctx, stmt); err != nil {
			return err
		}
	}
	return nil
}

// migrateData encodes a version 1 row's parts, whose properties were JSON.
func migrateData(subject, contentType string, props, body []byte) ([]byte, error) {
	var p map[string]any
	if len(props) > 0 {
		d := json.NewDecoder(bytes.NewReader(props))
		d.UseNumber()
		if err := d.Decode(&p); err != nil {
			return nil, fmt.Errorf("decode application properties: %w", err)
		}
		for k, v := range p {
			if n, ok := v.(json.Number); ok {
				if i, err := n.Int64(); err == nil {
					p[k] = i
				} else if f, err := n.Float64(); err == nil {
					p[k] = f
				}
			}
		}
	}
	return appendData(nil, subject, contentType, p, body)
}
