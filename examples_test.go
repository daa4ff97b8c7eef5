package caddylb_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
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

// TestDocsCaddyfilesAdapt: every Caddyfile in the README and docs/ (but
// those with elisions, "...") adapts, so that no option name or syntax
// there goes stale.
func TestDocsCaddyfilesAdapt(t *testing.T) {
	t.Setenv("LB_STICKY_SECRET", "docs-test")
	t.Setenv("ETCD_PASSWORD", "docs-test")
	files, err := filepath.Glob("docs/*.md")
	if err != nil {
		t.Fatal(err)
	}
	block := regexp.MustCompile("(?s)```caddyfile\n(.*?)```")
	n := 0
	for _, f := range append([]string{"README.md"}, files...) {
		text, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for i, m := range block.FindAllSubmatch(text, -1) {
			if bytes.Contains(m[1], []byte("...")) {
				continue
			}
			src := m[1]
			if bytes.HasPrefix(src, []byte("app ")) {
				// An app block on its own.
				src = slices.Concat([]byte(":8080 {\n\tload_balancer {\n"), src, []byte("\t}\n}\n"))
			}
			n++
			_, _, err := caddyconfig.GetAdapter("caddyfile").Adapt(src, nil)
			if err != nil && strings.Contains(err.Error(), "module not registered: events.handlers.") {
				continue // a third-party event handler, not in this build
			}
			if err != nil {
				t.Errorf("%s, Caddyfile %d: %v\n%s", f, i+1, err, src)
			}
		}
	}
	if n < 8 {
		t.Errorf("only %d Caddyfiles found in the README and docs/", n)
	}
}
