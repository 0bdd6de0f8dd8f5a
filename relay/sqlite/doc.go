// Package sqlite is hookbridge's embedded queue: a durable, peek-lock message
// queue in one SQLite file (modernc.org/sqlite, no cgo), shared safely by
// several processes on one host.
//
// It has the Service Bus features hookbridge relies on: lock duration and
// renewal, delivery count, abandon (optionally with a delay), dead-lettering
// with reason and description, automatic dead-lettering after the maximum
// delivery count (reason MaxDeliveryCountExceeded), duplicate detection by
// MessageID within a window, and per-session FIFO: a session's next message
// is handed out only after the previous one was completed or dead-lettered.
//
// Receivers wake as soon as a message is committed: in-process through a
// broadcast, across processes by watching the write-ahead log with inotify
// (other systems poll every 50ms). Queue URLs: see ParseURL.
package sqlite
