package caddylb

import (
	"errors"
	"io"
	"strings"
	"testing"
	"time"
)

// TestRetryBody drives a retryBody through attempts: what each attempt
// reads, and whether the body may be sent again after it.
func TestRetryBody(t *testing.T) {
	small := strings.Repeat("x", 1000)
	large := strings.Repeat("y", maxReplayBody+1)
	tests := []struct {
		name       string
		body       string
		record     bool // the method is idempotent
		read       int  // bytes the failed attempt reads; -1: all
		whole      bool // the failure needs the whole body again (it was sent)
		wantRewind bool
		wantNext   string // what the next attempt reads, if rewound
	}{
		{"nothing read: any method", small, false, 0, false, true, small},
		{"nothing read, failure after sending", small, false, 0, true, true, small},
		{"partly read, not kept", small, false, 10, true, false, ""},
		{"partly read, kept but not whole", small, true, 10, true, false, ""},
		{"all read and kept", small, true, -1, true, true, small},
		{"all read, not kept", small, false, -1, true, false, ""},
		{"all read, too large to keep", large, true, -1, true, false, ""},
		{"read but not sent", small, true, -1, false, false, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := newRetryBody(io.NopCloser(strings.NewReader(tt.body)), tt.record)
			first := b.attempt()
			switch {
			case tt.read < 0:
				if _, err := io.ReadAll(first); err != nil {
					t.Fatal(err)
				}
			case tt.read > 0:
				if _, err := io.ReadFull(first, make([]byte, tt.read)); err != nil {
					t.Fatal(err)
				}
			}
			if got := b.rewind(tt.whole); got != tt.wantRewind {
				t.Fatalf("rewind(%v) = %v, want %v", tt.whole, got, tt.wantRewind)
			}
			// The failed attempt's view reads nothing more, whatever holds it.
			if n, err := first.Read(make([]byte, 8)); n != 0 || !errors.Is(err, errAttemptOver) {
				t.Errorf("old view read %d, %v; want 0, errAttemptOver", n, err)
			}
			if !tt.wantRewind {
				return
			}
			got, err := io.ReadAll(b.attempt())
			if err != nil || string(got) != tt.wantNext {
				t.Errorf("next attempt read %d bytes (%v), want the %d of the body", len(got), err, len(tt.wantNext))
			}
		})
	}
}

// TestRetryBudgetWindow: retries fit within percent of the window's requests,
// and the floor, and old seconds leave the window.
func TestRetryBudgetWindow(t *testing.T) {
	sec := int64(time.Second)
	tests := []struct {
		name      string
		percent   int
		requests  int
		at        int64 // when the retries are asked for, after requests at 0
		wantAllow int   // retries allowed of 100 asked
	}{
		{"floor", 20, 10, 0, budgetFloor},
		{"percent above the floor", 20, 500, 0, 100},
		{"0 percent: the floor", 0, 500, 0, budgetFloor},
		{"100 percent", 100, 30, 0, 30},
		{"requests out of the window", 20, 500, budgetWindow * sec, budgetFloor},
		{"requests in the window still", 20, 500, (budgetWindow - 1) * sec, 100},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := &retryBudget{percent: tt.percent}
			for range tt.requests {
				b.request(0)
			}
			allowed := 0
			for range 100 {
				if b.allowRetry(tt.at) {
					allowed++
				}
			}
			if allowed != tt.wantAllow {
				t.Errorf("%d retries allowed, want %d", allowed, tt.wantAllow)
			}
		})
	}
}
