package discovery

import (
	"slices"
	"testing"
)

// TestRankPriorities: SRV priorities become tiers by rank, the lowest
// tier 0, whatever the numbers.
func TestRankPriorities(t *testing.T) {
	tests := []struct {
		name string
		in   []int
		want []int
	}{
		{"none", nil, nil},
		{"one priority", []int{10, 10, 10}, []int{0, 0, 0}},
		{"two", []int{10, 20, 10, 20}, []int{0, 1, 0, 1}},
		{"out of order, gaps", []int{30, 5, 65535, 5, 30}, []int{1, 0, 2, 0, 1}},
		{"zero is the lowest", []int{0, 1}, []int{0, 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			recs := make([]record, len(tt.in))
			for i, p := range tt.in {
				recs[i].priority = p
			}
			rankPriorities(recs)
			var got []int
			for _, r := range recs {
				got = append(got, r.priority)
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("ranks of %v: %v, want %v", tt.in, got, tt.want)
			}
		})
	}
}

// TestSRVWeight: an SRV weight is the instance's, 0 (RFC 2782's least)
// counting as 1.
func TestSRVWeight(t *testing.T) {
	for in, want := range map[uint16]int{0: 1, 1: 1, 3: 3, 65535: 65535} {
		if got := SRVWeight(in); got != want {
			t.Errorf("SRVWeight(%d) = %d, want %d", in, got, want)
		}
	}
}
