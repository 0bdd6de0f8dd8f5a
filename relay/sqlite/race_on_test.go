//go:build race

package sqlite_test

// raceEnabled: the race detector slows SQLite down tenfold, so the load
// tests run smaller.
const raceEnabled = true
