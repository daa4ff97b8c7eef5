package report

import "testing"

func TestCompareNatural(t *testing.T) {
	tests := []struct {
		a, b string
		want int
	}{
		{"srv0", "srv1", -1},
		{"srv2", "srv10", -1},
		{"srv10", "srv2", 1},
		{"srv10", "srv10", 0},
		{"srv01", "srv1", 0},
		{"", "srv0", -1},
		{"a", "b", -1},
		{"srv", "srv0", -1},
		{"lbyaml", "srv0", -1},
	}
	for _, tt := range tests {
		if got := compareNatural(tt.a, tt.b); got != tt.want {
			t.Errorf("compareNatural(%q, %q) = %d, want %d", tt.a, tt.b, got, tt.want)
		}
	}
}
