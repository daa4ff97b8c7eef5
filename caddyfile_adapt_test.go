package caddylb_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile" // the caddyfile adapter
	_ "github.com/caddyserver/caddy/v2/modules/standard"
)

// updateGoldenEnv, set to 1, makes TestCaddyfileAdapt rewrite the expected
// JSON of its golden files with what the adapter gives. Read the diff before
// committing it.
const updateGoldenEnv = "CADDYLB_UPDATE_GOLDEN"

// goldenSeparator splits a golden file into its Caddyfile and the JSON that
// `caddy adapt` must give for it.
const goldenSeparator = "\n----------\n"

// TestCaddyfileAdapt adapts each testdata/caddyfile_adapt/*.caddyfiletest
// the way `caddy adapt` does and compares the result with the file's JSON.
func TestCaddyfileAdapt(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("testdata", "caddyfile_adapt", "*.caddyfiletest"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatal("no golden files")
	}
	update := os.Getenv(updateGoldenEnv) == "1"
	for _, file := range files {
		t.Run(strings.TrimSuffix(filepath.Base(file), ".caddyfiletest"), func(t *testing.T) {
			raw, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			input, wantJSON, ok := strings.Cut(string(raw), goldenSeparator)
			if !ok {
				t.Fatalf("%s: no %q line between the Caddyfile and the JSON", file, strings.TrimSpace(goldenSeparator))
			}
			input += "\n"

			out, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(input), map[string]any{"filename": file})
			if err != nil {
				t.Fatalf("adapt: %v", err)
			}
			for _, w := range warnings {
				t.Errorf("warning: %s:%d: %s: %s", w.File, w.Line, w.Directive, w.Message)
			}
			got := tidyJSON(t, out)

			if update {
				if err := os.WriteFile(file, []byte(input+strings.TrimPrefix(goldenSeparator, "\n")+got+"\n"), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			if want := tidyJSON(t, []byte(wantJSON)); got != want {
				t.Errorf("adapted JSON differs from %s (rerun with %s=1 to update):\n%s\nwant:\n%s", file, updateGoldenEnv, got, want)
			}
		})
	}
}

// TestCaddyfileAdaptError checks that `caddy adapt` of a bad load_balancer
// fails with an error that says where: file, line, app and option.
func TestCaddyfileAdaptError(t *testing.T) {
	tests := []struct {
		name  string
		input string
		want  []string
	}{
		{
			name: "bad duration in an app block",
			input: `:8080 {
	load_balancer {
		app api.example.com {
			instances 127.0.0.1:8081
			timeout 0s
		}
	}
}
`,
			want: []string{"load_balancer", `app "api.example.com": timeout: duration must be positive`, "Caddyfile:5"},
		},
		{
			name: "unknown option in the shorthand, after a matcher",
			input: `:8080 {
	load_balancer /api/* 127.0.0.1:9000 {
		strategy round_robin
		max_conns 3
	}
}
`,
			want: []string{`app "*": unrecognized subdirective "max_conns"`, "Caddyfile:4"},
		},
		{
			name: "option given twice inside a handle block",
			input: `example.com {
	handle /api/* {
		load_balancer {
			app * {
				instances 127.0.0.1:9000
				health_uri /health
				health_uri /ready
			}
		}
	}
}
`,
			want: []string{`app "*": health_uri already specified`, "Caddyfile:7"},
		},
		{
			name: "error in a snippet names the import",
			input: `(pool) {
	load_balancer {
		app {args[0]} {
			strategy fastest
			instances 127.0.0.1:9000
		}
	}
}

:8080 {
	import pool api.example.com
}
`,
			want: []string{`app "api.example.com": strategy: unknown strategy "fastest"`, "Caddyfile:11", "import chain"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(tc.input), map[string]any{"filename": "Caddyfile"})
			if err == nil {
				t.Fatal("adapt succeeded; want an error")
			}
			t.Logf("error: %v", err)
			for _, want := range tc.want {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not contain %q", err, want)
				}
			}
		})
	}
}
