package testrun_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/hookbridge/hookbridge/internal/testrun"
)

var errLoop = errors.New("loop failed")

func TestStart(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name    string
		ret     error // what the loop returns once its context ends
		wantErr error
	}{
		{"clean stop", nil, nil},
		{"loop error", errLoop, errLoop},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			running := make(chan struct{})
			ended := make(chan struct{})
			stop := testrun.Start(t, func(ctx context.Context) error {
				close(running)
				<-ctx.Done()
				close(ended)
				return tt.ret
			})
			select {
			case <-running:
			case <-time.After(10 * time.Second):
				t.Fatal("the loop did not start")
			}
			select {
			case <-ended:
				t.Fatal("the loop ended before stop")
			case <-time.After(20 * time.Millisecond):
			}
			if err := stop(); !errors.Is(err, tt.wantErr) {
				t.Errorf("stop: %v, want %v", err, tt.wantErr)
			}
			select {
			case <-ended:
			default:
				t.Error("stop returned before the loop did")
			}
			if err := stop(); !errors.Is(err, tt.wantErr) {
				t.Errorf("second stop: %v, want %v", err, tt.wantErr)
			}
		})
	}
}

// TestStopsAtTheEnd: a loop the test never stops is stopped by the test's
// cleanup.
func TestStopsAtTheEnd(t *testing.T) {
	t.Parallel()
	ended := make(chan struct{})
	t.Run("leaves it running", func(t *testing.T) {
		testrun.Start(t, func(ctx context.Context) error {
			<-ctx.Done()
			close(ended)
			return nil
		})
	})
	select {
	case <-ended:
	default:
		t.Error("the loop still runs after its test ended")
	}
}
