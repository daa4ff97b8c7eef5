package cookie

import "testing"

func TestValue(t *testing.T) {
	tests := []struct {
		lines []string
		name  string
		want  string
	}{
		{nil, "a", ""},
		{[]string{"a=1"}, "a", "1"},
		{[]string{"b=2; a=1"}, "a", "1"},
		{[]string{"b=2", "a=1"}, "a", "1"},
		{[]string{`a="quoted"`}, "a", "quoted"},
		{[]string{"a=; a=2"}, "a", "2"},
		{[]string{"ab=1"}, "a", ""},
		{[]string{"a"}, "a", ""},
		{[]string{" a = 1"}, "a", ""}, // a space before '=' is part of no valid name
	}
	for _, tt := range tests {
		if got := Value(tt.lines, tt.name); got != tt.want {
			t.Errorf("Value(%q, %q) = %q, want %q", tt.lines, tt.name, got, tt.want)
		}
	}
	if n := testing.AllocsPerRun(100, func() { Value([]string{"x=1; a=2"}, "a") }); n != 0 {
		t.Errorf("Value allocates %v times", n)
	}
}
