package caddylb_test

import (
	"encoding/json"
	"fmt"
	"os"
	"reflect"
	"strings"
	"testing"
)

// TestExamples checks that examples/caddy.json is examples/Caddyfile in
// JSON, and that the demo does what the README says, on free ports.
func TestExamples(t *testing.T) {
	caddyfile, err := os.ReadFile("examples/Caddyfile")
	if err != nil {
		t.Fatal(err)
	}
	caddyJSON, err := os.ReadFile("examples/caddy.json")
	if err != nil {
		t.Fatal(err)
	}
	var fromCaddyfile, fromJSON any
	if err := json.Unmarshal(adapt(t, string(caddyfile)), &fromCaddyfile); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(caddyJSON, &fromJSON); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(fromCaddyfile, fromJSON) {
		t.Fatal("examples/caddy.json is not what examples/Caddyfile adapts to; regenerate it with\n" +
			"go run ./cmd/caddy adapt --config examples/Caddyfile --pretty > examples/caddy.json")
	}

	// Run the demo on free ports.
	s := newSite(t)
	replacer := strings.NewReplacer(
		`"listen": "localhost:2019"`, fmt.Sprintf(`"listen": %q, "config": {"persist": false}`, adminAddr),
		"127.0.0.1:8080", fmt.Sprintf("127.0.0.1:%d", s.port),
	)
	cfg := replacer.Replace(string(caddyJSON))
	for _, p := range []string{"9001", "9002", "9003"} {
		cfg = strings.ReplaceAll(cfg, "127.0.0.1:"+p, fmt.Sprintf("127.0.0.1:%d", freePort()))
	}
	if err := caddyLoad([]byte(cfg)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "backend 3 to be found unhealthy and 1, 2 healthy", func() bool {
		rep := fetchReport(t)
		if len(rep.Apps) != 2 || len(rep.Apps[0].Instances) != 3 {
			t.Fatalf("the demo's report: %+v, want 2 apps, the first with 3 instances", rep)
		}
		in := rep.Apps[0].Instances
		return in[0].Healthy && in[1].Healthy && !in[2].Healthy && in[2].LastError == "status 503"
	})

	seen := map[string]int{}
	for range 10 {
		status, body := s.get("api.example.com", "/hello")
		if status != 200 {
			t.Fatalf("api: %d %q", status, body)
		}
		seen[body]++
	}
	want := map[string]int{
		"backend 1 answers api.example.com/hello\n": 5,
		"backend 2 answers api.example.com/hello\n": 5,
	}
	if !reflect.DeepEqual(seen, want) {
		t.Fatalf("api answers: %v, want %v", seen, want)
	}
	if status, body := s.get("payments.example.com", "/pay"); status != 200 || !strings.HasSuffix(body, "answers payments.example.com/pay\n") {
		t.Fatalf("payments: %d %q", status, body)
	}
	if status, _ := s.get("localhost", "/"); status != 404 {
		t.Fatalf("unknown host: %d, want 404", status)
	}
}
