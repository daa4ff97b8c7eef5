package backend

import (
	"slices"
	"strings"
	"testing"
)

// TestSweepOutliers: which instances a sweep ejects, by the share of
// their requests that failed since the sweep before.
func TestSweepOutliers(t *testing.T) {
	tests := []struct {
		name      string
		policy    OutlierPolicy
		maxEject  int   // max_ejected_percent
		failures  []int // per instance, of 100 requests
		requests  int   // per instance; default 100
		want      []int // the instances ejected
		wantCause string
	}{
		{"a 30% outlier among perfect ones", OutlierPolicy{StdevFactor: 1.9, MinHosts: 5, MinRequests: 50}, 50,
			[]int{0, 30, 0, 0, 0}, 0, []int{1}, "success rate 70% vs pool 100%"},
		{"2% among perfect ones is not an outlier", OutlierPolicy{StdevFactor: 1.9, MinHosts: 5, MinRequests: 50}, 50,
			[]int{0, 2, 0, 0, 0}, 0, nil, ""},
		{"a 30% outlier among noisy ones", OutlierPolicy{StdevFactor: 1.9, MinHosts: 5, MinRequests: 50}, 50,
			[]int{1, 30, 3, 2, 0}, 0, []int{1}, "success rate 70% vs pool 98.5%"},
		{"too few instances to judge", OutlierPolicy{StdevFactor: 1.9, MinHosts: 5, MinRequests: 50}, 50,
			[]int{0, 30, 0, 0}, 0, nil, ""},
		{"too few requests to judge", OutlierPolicy{StdevFactor: 1.9, MinHosts: 5, MinRequests: 200}, 50,
			[]int{0, 30, 0, 0, 0}, 0, nil, ""},
		{"failure percentage, within max_ejected_percent", OutlierPolicy{FailurePercent: 20, MinHosts: 5, MinRequests: 50}, 40,
			[]int{40, 0, 40, 0, 40}, 0, []int{0, 2}, "failure rate 40% over 100 requests (threshold 20%)"},
		{"failure percentage below the threshold", OutlierPolicy{FailurePercent: 50, MinHosts: 3, MinRequests: 50}, 50,
			[]int{40, 0, 0}, 0, nil, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := passive(0)
			p.MaxEjectedPercent = tt.maxEject
			var ins []*Instance
			var recs []*recorder
			for range tt.failures {
				in, rec := newTest(t, 1, p)
				ins, recs = append(ins, in), append(recs, rec)
			}
			pool := NewPool(ins...)
			if got := pool.SweepOutliers(&tt.policy, t0); got != nil {
				t.Fatalf("the first sweep ejected %v: it only takes the counts", got)
			}
			n := tt.requests
			if n == 0 {
				n = 100
			}
			for i, f := range tt.failures {
				for k := range n {
					status := 200
					if k < f {
						status = 500
					}
					ins[i].RecordResponse(status, t0)
				}
			}
			got := pool.SweepOutliers(&tt.policy, t0+minute)
			var idx []int
			for _, in := range got {
				for i, x := range ins {
					if x == in {
						idx = append(idx, i)
					}
				}
			}
			if len(idx) != len(tt.want) || (len(idx) > 0 && !slices.Equal(idx, tt.want)) {
				t.Fatalf("ejected %v, want %v", idx, tt.want)
			}
			for _, i := range tt.want {
				st := ins[i].Status()
				if st.State != StateEjected || !strings.HasPrefix(st.Reason, tt.wantCause) {
					t.Errorf("instance %d: %s, %q; want ejected, %q", i, st.State, st.Reason, tt.wantCause)
				}
				if c := recs[i].take(); len(c) != 1 || c[0].Event != EventEjected {
					t.Errorf("instance %d: changes %v, want one ejection", i, events(c))
				}
			}
			if pool.Sweeps() != 2 {
				t.Errorf("sweeps %d, want 2", pool.Sweeps())
			}
		})
	}
}
