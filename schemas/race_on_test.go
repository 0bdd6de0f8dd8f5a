//go:build race

package schemas_test

// raceEnabled: the race detector's instrumentation moves values to the
// heap, so allocation counts are checked only without it.
const raceEnabled = true
