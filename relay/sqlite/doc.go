// Package sqlite is hookbridge's embedded queue: a durable, peek-lock message
// queue in one SQLite file (modernc.org/sqlite, no cgo), shared safely by
// several processes on one host.
//
// It has the Service Bus features hookbridge relies on: lock duration and
// renewal, delivery count, abandon (optionally with a delay), dead-lettering
// with reason and description, automatic dead-lettering after the maximum
// delivery count (reason MaxDeliveryCountExceeded), duplicate detection by
// MessageID within a window, per-session FIFO (a session's next message is
// handed out only after the previous one was completed or dead-lettered),
// and messages sent straight to the dead-letter queue
// (relay.Message.DeadLetterReason).
//
// How it is laid out, and why (see schema.go and index.go):
//   - A send is one sequential append to a table with no secondary index,
//     fsynced before SendBatch returns; concurrent sends share the fsync
//     (walSyncer).
//   - Each receiving process keeps, in memory, the sequence numbers of every
//     session's messages, brought up to date by scanning the rows added since
//     its last receive, and checks a session's head in the database inside
//     its write transaction before handing it out. Duplicates are dropped
//     when a receiver's scan finds them, even behind a waiting head.
//   - Claims, settlements and lock renewals of one process are combined into
//     shared transactions, which are not fsynced: a power cut can only cause
//     a redelivery.
//   - The processes sharing a file serialize their write transactions with a
//     file lock (flock on the -notify file); a writer waiting for it waits
//     in the kernel, which hands it over as soon as it is let go.
//
// Run does the background work: checkpoints that keep the write-ahead log
// under a few megabytes, health checks (a write-ahead log deleted under the
// running processes stops the queue from acknowledging anything), and, in a
// process that receives, an inotify watch on the -notify file, which every
// commit writes, so receivers wake as soon as another process commits (other
// systems, or without Run, poll every 50ms). Ready reports whether the queue
// can take a commit now. Queue URLs: see ParseURL.
package sqlite
