package main

import (
	"fmt"
	"strconv"
	"time"
)

// Flag values that refuse, when parsed (from the command line or the
// environment), a number the command cannot honour as given: zero where
// the library would read zero as "the default", negatives, absurd sizes.
// pflag reports the refusal with the flag's name; it is a usage error.

// bounded is an integer flag limited to [min, max].
type bounded[T int | int64] struct {
	p        *T
	min, max T
}

func (b *bounded[T]) String() string {
	if b.p == nil {
		return "0"
	}
	return strconv.FormatInt(int64(*b.p), 10)
}

func (b *bounded[T]) Set(s string) error {
	v, err := strconv.ParseInt(s, 0, 64) // as pflag reads ints: 0x10, 1_000 too
	if err != nil {
		return fmt.Errorf("not a whole number")
	}
	if v < int64(b.min) || v > int64(b.max) {
		return fmt.Errorf("must be between %d and %d", b.min, b.max)
	}
	*b.p = T(v)
	return nil
}

func (b *bounded[T]) Type() string { return "int" }

// positiveDuration is a duration flag that must be above zero.
type positiveDuration struct{ p *time.Duration }

func (d positiveDuration) String() string {
	if d.p == nil {
		return "0s"
	}
	return d.p.String()
}

func (d positiveDuration) Set(s string) error {
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("not a duration; use e.g. 30s or 2m")
	}
	if v <= 0 {
		return fmt.Errorf("must be positive, e.g. 30s")
	}
	*d.p = v
	return nil
}

func (d positiveDuration) Type() string { return "duration" }

// boundedDuration is a duration flag limited to [min, max].
type boundedDuration struct {
	p        *time.Duration
	min, max time.Duration
}

func (d boundedDuration) String() string { return positiveDuration{d.p}.String() }

func (d boundedDuration) Set(s string) error {
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("not a duration; use e.g. 30s or 2m")
	}
	if v < d.min || v > d.max {
		return fmt.Errorf("must be between %s and %s", d.min, d.max)
	}
	*d.p = v
	return nil
}

func (d boundedDuration) Type() string { return "duration" }
