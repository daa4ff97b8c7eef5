package backend_test

import (
	"errors"
	"math"
	"sync"
	"testing"
	"time"

	"github.com/golb/caddy-lb/backend"
)

func TestHistogram(t *testing.T) {
	for _, tc := range []struct {
		sample time.Duration
		le     float64 // the smallest bound it is under; +Inf for none
	}{
		{0, .005},
		{5 * time.Millisecond, .005}, // bounds are inclusive (le)
		{5*time.Millisecond + 1, .01},
		{time.Second, 1},
		{10 * time.Second, 10},
		{11 * time.Second, math.Inf(1)},
	} {
		var h backend.Histogram
		h.Observe(tc.sample)
		s := h.Snapshot()
		if s.Count != 1 || s.Sum != tc.sample.Seconds() {
			t.Errorf("%v: count %d, sum %v", tc.sample, s.Count, s.Sum)
		}
		for i, b := range backend.HistogramBounds {
			want := uint64(0)
			if b >= tc.le {
				want = 1
			}
			if s.Buckets[i] != want {
				t.Errorf("%v: bucket le=%v = %d, want %d", tc.sample, b, s.Buckets[i], want)
			}
		}
	}
}

func TestRecordResponseClasses(t *testing.T) {
	in := backend.NewWeighted(mustParse(t, "http://a"), 1)
	for _, status := range []int{101, 200, 204, 302, 404, 499, 500, 502, 0, 700} {
		in.RecordResponse(status, 0)
	}
	want := [len(backend.StatusClasses)]uint64{1, 2, 1, 2, 4}
	if got := in.Metrics().Responses; got != want {
		t.Errorf("responses by class %v = %v, want %v", backend.StatusClasses, got, want)
	}
}

func TestChecksCounted(t *testing.T) {
	in := backend.NewWeighted(mustParse(t, "http://a"), 1)
	for _, err := range []error{nil, errors.New("status 503"), errors.New("status 503"), nil, nil} {
		if !in.TryStartCheck() {
			t.Fatal("TryStartCheck = false")
		}
		in.ObserveCheck(time.Millisecond)
		in.FinishCheck(backend.Now(), err, 1, 1)
	}
	m := in.Metrics()
	if m.ChecksPassed != 3 || m.ChecksFailed != 2 || m.CheckDuration.Count != 5 {
		t.Errorf("passed %d, failed %d, durations %d; want 3, 2, 5", m.ChecksPassed, m.ChecksFailed, m.CheckDuration.Count)
	}
	in.RecordRetry()
	// Ejected by passive checks: at its one allowed failure.
	ejecting := backend.New(mustParse(t, "http://b"), 1, &backend.Policy{MaxFails: 1, FailDuration: time.Minute,
		MaxFailDuration: time.Minute, MaxEjectedPercent: 100}, backend.Now())
	t.Cleanup(ejecting.Close)
	backend.NewPool(ejecting).Failed(ejecting, backend.Now(), "status 502", false)
	if m := in.Metrics(); m.Retries != 1 || m.Ejections != 0 {
		t.Errorf("retries %d, ejections %d; want 1, 0", m.Retries, m.Ejections)
	}
	if m := ejecting.Metrics(); m.Ejections != 1 {
		t.Errorf("ejections %d after an ejection, want 1", m.Ejections)
	}
}

const sec = int64(time.Second)

func TestRecentWindow(t *testing.T) {
	for _, tc := range []struct {
		name             string
		record           []int64 // times of requests, every other one failed (5xx)
		at               int64
		requests, errors uint64
	}{
		{"nothing yet", nil, 0, 0, 0},
		{"the same second", []int64{0, 1, 2, 3}, sec / 2, 4, 2},
		{"59 s later", []int64{sec / 2, sec / 2}, 59*sec + sec/2, 2, 1},
		{"60 s later: gone", []int64{sec / 2, sec / 2}, 60*sec + sec/2, 0, 0},
		{"a minute apart", []int64{sec / 2, 60*sec + sec/2, 61 * sec}, 61 * sec, 2, 1},
		{"a slot reused", []int64{sec, sec, 61 * sec}, 61 * sec, 1, 0},
		{"late sample for an older slot", []int64{61 * sec, sec}, 61 * sec, 1, 0},
		{"long after the start", []int64{1000 * sec, 1030 * sec, 1059 * sec, 1060 * sec}, 1060 * sec, 3, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := backend.NewWeighted(mustParse(t, "http://a"), 1)
			for i, at := range tc.record {
				status := 200
				if i%2 == 1 {
					status = 503
				}
				in.RecordResponse(status, at)
			}
			got := in.Recent(tc.at)
			if got.Requests != tc.requests || got.Errors != tc.errors {
				t.Errorf("requests %d, errors %d; want %d, %d", got.Requests, got.Errors, tc.requests, tc.errors)
			}
		})
	}
}

func TestRecentLatency(t *testing.T) {
	in := backend.NewWeighted(mustParse(t, "http://a"), 1)
	for range 98 {
		in.ObserveResponseHeader(time.Millisecond, 5*sec)
	}
	for range 2 {
		in.ObserveResponseHeader(time.Second, 5*sec)
	}
	for _, tc := range []struct {
		at       int64
		n        uint64
		p50, p99 time.Duration
	}{
		{5 * sec, 100, time.Millisecond, time.Second},
		{55 * sec, 100, time.Millisecond, time.Second},
		{60 * sec, 0, 0, 0}, // the 10-second slot of the samples is 6 slots back
	} {
		got := in.Recent(tc.at)
		if got.Latencies != tc.n || !within(got.P50, tc.p50) || !within(got.P99, tc.p99) {
			t.Errorf("at %v: %d latencies, p50 %v, p99 %v; want %d, about %v, %v",
				time.Duration(tc.at), got.Latencies, got.P50, got.P99, tc.n, tc.p50, tc.p99)
		}
	}

	// Any one sample's estimate is off by at most a quarter.
	for d := 10 * time.Microsecond; d < 100*time.Second; d = d * 9 / 8 {
		in := backend.NewWeighted(mustParse(t, "http://a"), 1)
		in.ObserveResponseHeader(d, 0)
		got := in.Recent(0)
		if d >= 131*time.Microsecond && d < 68*time.Second && !within(got.P50, d) {
			t.Errorf("one sample of %v: p50 %v", d, got.P50)
		}
		if got.P50 <= 0 || got.P99 < got.P50 {
			t.Errorf("one sample of %v: p50 %v, p99 %v", d, got.P50, got.P99)
		}
	}
}

// within reports whether got is within a quarter of want (both 0 counts).
func within(got, want time.Duration) bool {
	if want == 0 {
		return got == 0
	}
	return math.Abs(float64(got-want)) <= float64(want)/4
}

func TestStatsConcurrent(t *testing.T) {
	in := backend.NewWeighted(mustParse(t, "http://a"), 1)
	const workers, each = 8, 1000
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range each {
				now := int64(i%3) * sec / 4 // all in the first second
				in.ObserveResponseHeader(time.Duration(w+1)*time.Millisecond, now)
				in.RecordResponse(200+300*(i%2), now)
				_ = in.Recent(now)
				_ = in.Metrics()
			}
		})
	}
	wg.Wait()
	got := in.Recent(0)
	if got.Requests != workers*each || got.Errors != workers*each/2 || got.Latencies != workers*each {
		t.Errorf("requests %d, errors %d, latencies %d; want %d, %d, %d",
			got.Requests, got.Errors, got.Latencies, workers*each, workers*each/2, workers*each)
	}
	if m := in.Metrics(); m.ResponseHeader.Count != workers*each || m.Responses[1] != workers*each/2 {
		t.Errorf("metrics: %d latencies, %d 2xx", m.ResponseHeader.Count, m.Responses[1])
	}
}
